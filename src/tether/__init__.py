"""tether: reinforcement learning from human feedback, end to end.

The Python API is tether.api's: one function per stage and its config class, e.g.

    from tether import SFTConfig, sft
    summary = sft(SFTConfig(data="demos.jsonl", output_dir="runs/sft"), max_steps=50)

Those names load on first use, so that `import tether.config` (and the command line's start) stays light.
"""

import importlib
import importlib.util

__version__ = "0.1.0"


def __getattr__(name: str):
    """`tether.sft`, `from tether import SFTConfig`, ...: a name of tether.api's __all__, imported when first asked for.
    A submodule's name (`from tether import config`) is left to the import system, so it loads no more than itself."""
    if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    api = importlib.import_module("tether.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
