"""The offline research world: a generated web of fictional entities, and questions about it.

`World.generate(seed)` builds pages and questions deterministically; `WorldServer` serves the
pages and a BM25 search endpoint (SearXNG JSON) on loopback for the tools to use.
"""

from dr_jax.world.questions import Question, Read
from dr_jax.world.server import WorldServer
from dr_jax.world.world import World

__all__ = ["Question", "Read", "World", "WorldServer"]
