"""Copy the vendored test files from a `shared/data` folder, or check that they still match it.

    python tests/data/vendor.py [--check] SHARED_DATA   # e.g. ../shared/data beside the repo

Every file here is a byte-exact copy of its upstream file (README.md says where each came from);
the qwen/LICENSE copy is the Apache-2.0 text, the same as deepresearcher/LICENSE.
"""

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGES = ["blog.python.org", "caktusgroup.com.django", "creativecommons.org",
         "en.wikipedia.org.tsne", "github.blog.spiceland", "lemire.me.json",
         "nature.com.telescope", "pcgamer.com.skyrim", "phys.org.tool",
         "reuters.com.parasite", "salon.com.emissions", "theverge.com.ios13"]  # fmt: skip
# vendored path -> path under shared/data
FILES = {
    **{f"deepresearcher/{name}": f"deepresearcher/{name}"
       for name in ("LICENSE", "dev.parquet", "test.parquet", "prompts.json", "tools.json",
                    "signal/data_search.json", "signal/data_read.json")},
    **{f"pages/{name}.html": f"pages/{name}.html" for name in PAGES},
    "pages/LICENSE": "pages/LICENSE",
    "qwen/qwen2_5_chat_template.jinja": "qwen/qwen2_5_chat_template.jinja",
    "qwen/LICENSE": "deepresearcher/LICENSE",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the upstream data folder (shared/data)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args(argv)
    differ = []
    for ours, theirs in FILES.items():
        src, dst = args.source / theirs, HERE / ours
        if args.check:
            if not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
                differ.append(ours)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    for name in differ:
        print(f"differs from {args.source}: {name}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
