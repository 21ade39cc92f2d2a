"""Each Python model imports its own files, apart from every other model's.

Triton runs every instance of a Python model in its own process, with the version folder and
the model folder on `sys.path`, so `import utils` in model.py finds the model's own utils.py.
Here models share one interpreter, so each (model, version, instance, load) gets a package of
its own, `_torchtide_<model>_<version>_<instance>_<n>`, whose `__path__` is the version folder
then the model folder:

* model.py is that package's submodule, so relative imports (`from . import utils`) work;
* every module imported from those folders runs with builtins of its own whose `__import__`
  sends an absolute import of a name the folders hold (`import utils`, `from utils import f`,
  `import utils.sub`, at module level or lazily inside execute()) to `<package>.utils`; any
  other name goes to the ordinary import. The model's own file wins over an installed module
  of the same name (as beside a script), unlike Triton, where sys.path lists site-packages
  first;
* sys.modules holds these modules under the package's unique name only, never as `utils`, so
  two models' utils.py never meet, and a reload (a new package) reads the files again, from
  source: bytecode caches are neither read nor written (an edit within the same second and of
  the same size would otherwise be missed, and the repository may be read-only).

Code outside the model's files that imports a bare name (pickle and torch.load finding a
class of utils.py, importlib.import_module("utils")) looks in sys.modules and on sys.path, where
the model's files are not. While the model is imported and initialized (one model at a time,
on the loading thread), such names are answered with the model's own modules: the package's
`__import__` also enters the bare names it resolved into sys.modules (pickle reads
sys.modules after importing), and a finder placed last on sys.meta_path answers names nothing
installed holds, as Triton's sys.path would. Those entries are removed when initialize() ends.

Limits: after initialize() (in execute(), or from threads the model started), such indirect
imports of the model's files fail (ModuleNotFoundError, or KeyError from pickle);
`exec`/`eval` of code with globals that carry no `__builtins__` use the ordinary import;
names added to the builtins module after the model was imported are not seen as bare names
in its code.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

_REAL_IMPORT = builtins.__import__
_counter = itertools.count(1)
_packages: dict[str, ModelPackage] = {}  # package name -> package; read by the finders
_registry_lock = threading.RLock()


class ModelPackage:
    """One model instance's private package: its modules, its `__import__`, its cleanup."""

    def __init__(self, model_file: Path, tag: str) -> None:
        self.model_file = model_file
        self.name = f"_torchtide_{re.sub(r'[^0-9A-Za-z_]', '_', tag)}_{next(_counter)}"
        self.folders = [str(model_file.parent), str(model_file.parent.parent)]
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self._local: dict[str, bool] = {}
        self._aliases: set[str] = set()  # bare names made to point at this package's modules
        self._alias_thread: int | None = None
        spec = importlib.machinery.ModuleSpec(self.name, None, is_package=True)
        spec.submodule_search_locations = list(self.folders)
        package = importlib.util.module_from_spec(spec)
        package.__dict__["__builtins__"] = self.builtins
        with _registry_lock:
            _install_finders()
            _packages[self.name] = self
            sys.modules[self.name] = package

    def import_model(self) -> ModuleType:
        """Import the model file (model.py) as `<package>.model`."""
        return importlib.import_module(f"{self.name}.{self.model_file.stem}")

    def is_local(self, top: str) -> bool:
        """Whether the model's folders hold a module or package named `top`."""
        hit = self._local.get(top)
        if hit is None:
            hit = f"{self.name}.{top}" in sys.modules or _folder_holds(top, self.folders)
            self._local[top] = hit
        return hit

    def _import(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: Sequence[str] = (),
        level: int = 0,
    ) -> ModuleType:
        if level == 0 and name:
            top = name.partition(".")[0]
            if self.is_local(top):
                module: ModuleType = _REAL_IMPORT(
                    f"{self.name}.{name}", globals, locals, fromlist, 0
                )
                if self._alias_thread == threading.get_ident():
                    # pickle's find_class calls this __import__, then reads sys.modules[name]
                    self._alias(top)
                    self._alias(name)
                return module if fromlist else sys.modules[f"{self.name}.{top}"]
        imported: ModuleType = _REAL_IMPORT(name, globals, locals, fromlist, level)
        return imported

    @contextmanager
    def aliases(self) -> Iterator[None]:
        """While the body runs on this thread, bare names only the model's folders hold
        resolve to the model's modules for code outside them too (see the module's notes).
        Callers run this one model at a time."""
        self._alias_thread = threading.get_ident()
        try:
            yield
        finally:
            self._alias_thread = None
            for bare in self._aliases:
                mine = sys.modules.get(f"{self.name}.{bare}")
                if mine is not None and sys.modules.get(bare) is mine:
                    del sys.modules[bare]
            self._aliases.clear()

    def _alias(self, bare: str) -> None:
        mine = sys.modules.get(f"{self.name}.{bare}")
        if mine is not None and sys.modules.setdefault(bare, mine) is mine:
            self._aliases.add(bare)

    def alias_target(self, fullname: str) -> str | None:
        """The module a bare top-level import should alias, while aliases() is active."""
        if self._alias_thread != threading.get_ident() or "." in fullname:
            return None
        if not self.is_local(fullname):
            return None
        self._aliases.add(fullname)
        return f"{self.name}.{fullname}"

    def close(self) -> None:
        """Forget the package's modules (a reload makes a new package)."""
        with _registry_lock:
            _packages.pop(self.name, None)
            prefix = self.name + "."
            # Other threads import while we clean up, adding to sys.modules: iterating it in
            # Python code would let them in between two steps ("dictionary changed size during
            # iteration"). list() copies the keys in one C call, which no thread interrupts.
            for key in list(sys.modules):
                if key == self.name or key.startswith(prefix):
                    sys.modules.pop(key, None)


def _folder_holds(top: str, folders: list[str]) -> bool:
    spec = importlib.machinery.PathFinder.find_spec(top, folders)
    if spec is None:
        return False
    if spec.loader is not None:
        return True
    # A bare folder (namespace package): the model's only if no installed module has the name,
    # as a namespace portion on Triton's sys.path would rank below every regular module.
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return True


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Loads a model folder's .py file with the package's builtins, always from source."""

    def __init__(self, fullname: str, path: str, namespace: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._builtins = namespace

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = ModuleType(spec.name)
        module.__dict__["__builtins__"] = self._builtins
        return module

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


class _PackageFinder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: the submodules of model packages, loaded by _SourceLoader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        root, dot, _ = fullname.partition(".")
        package = _packages.get(root) if dot else None
        if package is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            assert spec.origin is not None
            spec.loader = _SourceLoader(fullname, spec.origin, package.builtins)
        return spec


class _AliasLoader(importlib.abc.Loader):
    """Answers a bare name with a module of a model package (imported if need be)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: bare names the ordinary finders did not find, for the model
    that is importing or initializing on this thread."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None:
            return None
        with _registry_lock:
            packages = list(_packages.values())
        for package in packages:
            alias = package.alias_target(fullname)
            if alias is not None:
                return importlib.util.spec_from_loader(fullname, _AliasLoader(alias))
        return None


_FINDERS: list[importlib.abc.MetaPathFinder] = []


def _install_finders() -> None:
    if _FINDERS:
        return
    _FINDERS.extend((_PackageFinder(), _AliasFinder()))
    sys.meta_path.insert(0, _FINDERS[0])
    sys.meta_path.append(_FINDERS[1])
