"""One module per editing method; importing this package registers every method in ``ALGORITHMS``.

A new method is one new module here (its config dataclass, its solver or direct editor and its
registry entries) plus its ``conf/algo/<name>.yaml``.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
