"""Progress lines for logs (no terminal): periodic, with what is done and an estimate of what
is left; nothing when disabled."""

from dr_jax.progress import Progress


def test_off_a_terminal_progress_prints_plain_periodic_lines(capsys):
    progress = Progress(4, "validation", every=0.0)
    for _ in range(4):
        progress.done()
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["validation: 1/4", "validation: 2/4",
                                                      "validation: 3/4"]  # fmt: skip
    assert all(line.endswith(" s left") and "\r" not in line for line in lines)
    assert Progress(4, "x").line(10.0) == "x: 0/4, 10 s, about ? s left"


def test_a_disabled_progress_says_nothing(capsys):
    progress = Progress(4, "validation", enabled=False, every=0.0)
    progress.done(4)
    progress.close()
    assert capsys.readouterr().err == ""
