"""Run a generator imported as a module under an official module name (the submitit case).

``python tests/official/as_module.py main_vicreg tests/official/gen_vicreg.py ARGS...`` registers
the generator file in ``sys.modules`` as ``main_vicreg`` and calls its ``main(ARGS)``, so the
functions it pickles are stored as ``main_vicreg.<name>``, as when facebookresearch/vicreg's
``run_with_submitit.py`` does ``import main_vicreg; main_vicreg.main(args)``.
"""

import importlib.util
import sys
from pathlib import Path


def run(name: str, path: str, argv: list[str]) -> int:
    sys.path.insert(0, str(Path(path).resolve().parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2], sys.argv[3:]))
