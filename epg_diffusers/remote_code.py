"""The code saved with every pipeline folder, so that diffusers alone loads it (``trust_remote_code=True``).

diffusers loads a third-party pipeline without its package when the folder carries the code
(``DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)``): ``model_index.json`` names
``"_class_name": ["pipeline_epg", "EPGPipeline"]`` for ``pipeline_epg.py`` at the folder root and
``"transformer": ["transformer_epg", "EPGTransformer2DModel"]`` for ``transformer/transformer_epg.py`` (the same
for the scheduler). From a Hub repo diffusers downloads only those files, so each must be self-contained.

They are generated here from the package's own modules (one source of truth): the modules a class needs are
concatenated in dependency order; imports between them are dropped, ``from .. import sigmas as sm`` becomes a
``SimpleNamespace`` of the sigma module's names, component classes that the pipeline names only in annotations
become their diffusers base class, and the pipeline's package-only block (between ``# [package only]`` and
``# [end package only]``: Hub download, saving this code, model cards) is replaced by ``BUNDLE_HOOKS``.
:func:`package_entries` maps such a ``model_index.json`` back to this package's classes for ``EPGPipeline``.
"""

import ast
import importlib
import inspect
import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from .version import __version__

PACKAGE = __name__.split(".")[0]
BEGIN, END = "# [package only]", "# [end package only]"
# diffusers copies the relative imports it finds with these patterns (dynamic_modules_utils.get_relative_imports).
_DIFFUSERS_RELATIVE_IMPORT = re.compile(r"^\s*(?:import\s+\.\S+\s*$|from\s+\.\S+\s+import)", re.MULTILINE)


@dataclass(frozen=True)
class Bundle:
    """One generated file: its module name, the package modules it concatenates and the stand-ins it needs."""

    file: str
    modules: tuple[str, ...]
    stand_ins: dict[str, str] = field(default_factory=dict)  # name -> diffusers class (annotations only)


BUNDLES = {  # class name -> the file diffusers loads it from
    "EPGPipeline": Bundle(
        "pipeline_epg", ("sigmas", "pipelines.inputs", "pipelines.labels", "pipelines.pipeline_epg"),
        {"EPGTransformer2DModel": "ModelMixin", "EPGSchedulerBase": "SchedulerMixin"},
    ),
    "EPGTransformer2DModel": Bundle(
        "transformer_epg", ("models.presets", "models.loading", "models.layers", "models.transformer_epg")
    ),
    "EPGHeunScheduler": Bundle("scheduling_epg_heun", ("sigmas", "schedulers.base", "schedulers.scheduling_epg_heun")),
    "EPGConsistencyScheduler": Bundle(
        "scheduling_epg_consistency", ("sigmas", "schedulers.base", "schedulers.scheduling_epg_consistency")
    ),
    "EPGEDMSDEScheduler": Bundle(
        "scheduling_epg_edm_sde",
        ("sigmas", "schedulers.base", "schedulers.scheduling_epg_heun", "schedulers.scheduling_epg_edm_sde"),
    ),
    **{name: Bundle("scheduling_epg_euler", ("sigmas", "schedulers.base", "schedulers.scheduling_epg_euler"))
       for name in ("EPGEulerScheduler", "EPGEulerAncestralScheduler", "EPGEulerSDEScheduler")},
    **{name: Bundle("scheduling_epg_multistep", ("sigmas", "schedulers.base", "schedulers.scheduling_epg_multistep"))
       for name in ("EPGDPMSolverMultistepScheduler", "EPGUniPCMultistepScheduler")},
}

# Replaces the package-only block of pipeline_epg.py in the generated file: saving a pipeline that was loaded
# from generated code copies that code along, so the saved folder loads again with diffusers alone.
BUNDLE_HOOKS = '''\
    def save_pretrained(self, save_directory, **kwargs):
        """``DiffusionPipeline.save_pretrained`` plus the code files this pipeline was loaded from."""
        if kwargs.get("push_to_hub"):
            raise ValueError("save, then upload the folder (huggingface_hub.upload_folder or `epg push`).")
        super().save_pretrained(save_directory, **kwargs)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        for name, obj in [("_class_name", self), *self.components.items()]:
            module = sys.modules[type(obj).__module__]
            if not module.__name__.startswith("diffusers_modules."):  # a component from an installed library
                continue
            stem = module.__name__.rsplit(".", 1)[-1]
            folder = save_directory if name == "_class_name" else os.path.join(save_directory, name)
            shutil.copyfile(module.__file__, os.path.join(folder, stem + ".py"))
            index[name] = [stem, type(obj).__name__]
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
'''
BUNDLE_HOOK_IMPORTS = ["import json", "import os", "import shutil", "import sys"]


def _module_name(name: str) -> str:
    return f"{PACKAGE}.{name}"


def _source(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")


def _strip_package_only(text: str, module: str, replacement: str | None) -> str:
    """Remove (or replace) every ``# [package only]`` ... ``# [end package only]`` block."""
    lines, out, inside = text.splitlines(keepends=True), [], False
    for number, line in enumerate(lines, 1):
        marker = line.strip()
        if marker.startswith(BEGIN):
            if inside:
                raise ValueError(f"{module}:{number}: nested {BEGIN!r}.")
            inside = True
            if replacement is not None:
                out.append(replacement)
        elif marker.startswith(END):
            if not inside:
                raise ValueError(f"{module}:{number}: {END!r} without {BEGIN!r}.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{module}: {BEGIN!r} is never closed.")
    return "".join(out)


def _defined_names(tree: ast.Module) -> set[str]:
    """Top-level names a module defines itself (functions, classes, assignments; not its imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module of a relative ``from`` import inside ``module``."""
    base = module.split(".")[: -node.level]
    return ".".join(base + ([node.module] if node.module else []))


def bundle_source(class_name: str) -> str:
    """The self-contained source of the file diffusers loads ``class_name`` from (see the module docstring)."""
    bundle = BUNDLES[class_name]
    modules = [_module_name(m) for m in bundle.modules]
    imports: dict[str, set[str]] = {}  # "from X" -> names; "import X [as Y]" -> {""}
    sections, defined, emitted = [], {}, set()
    for module in modules:
        replacement = BUNDLE_HOOKS if module.endswith("pipeline_epg") else None
        text = _strip_package_only(_source(module), module, replacement)
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and node not in tree.body:
                raise ValueError(f"{module}:{node.lineno}: a relative import outside the top level cannot be bundled.")
        drop, statements = set(), []
        for node in (n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))):
            drop.update(range(node.lineno, node.end_lineno + 1))
            if isinstance(node, ast.Import):
                imports.update({f"import {a.name}" + (f" as {a.asname}" if a.asname else ""): {""} for a in node.names})
            elif not node.level and node.module.split(".")[0] != PACKAGE:
                imports.setdefault(f"from {node.module}", set()).update(
                    a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            else:
                source = node.module if not node.level else _absolute(module, node)
                statements += _resolve(module, node.lineno, source, node.names, modules, defined, bundle.stand_ins)
        names = _defined_names(tree)
        for name in names & defined.keys():
            raise ValueError(f"{name!r} is defined in both {defined[name]} and {module}; the bundle needs one.")
        defined.update(dict.fromkeys(names, module))
        new = [line for line in statements if line not in emitted]
        emitted.update(new)
        body, first = [], min(drop, default=0)
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            body += [f"{statement}\n" for statement in new] if number == first else []  # where the imports were
            body += [] if number in drop else [line]
        sections.append((module, "".join(body)))
    if class_name == "EPGPipeline":
        imports.update(dict.fromkeys(BUNDLE_HOOK_IMPORTS, {""}))
    if bundle.stand_ins:
        imports.setdefault("from diffusers", set()).update(bundle.stand_ins.values())
    if any(line.split(" = ")[1].startswith("SimpleNamespace(") for line in emitted):
        imports.setdefault("from types", set()).add("SimpleNamespace")
    return _render(class_name, bundle, imports, sections)


def _resolve(module, lineno, source, names, modules, defined, stand_ins) -> list[str]:
    """Statements that replace ``from <source> import <names>`` inside the bundle (checked to resolve)."""
    out = []
    for alias in names:
        name, local = alias.name, alias.asname or alias.name
        if f"{source}.{name}" in modules:  # a whole module: a namespace of its names
            if f"{source}.{name}" not in defined.values():
                raise ValueError(f"{module}:{lineno}: {source}.{name} must come before {module} in the bundle.")
            members = ", ".join(f"{m}={m}" for m in sorted(k for k, v in defined.items() if v == f"{source}.{name}"))
            rows = textwrap.wrap(members + ",", width=112, break_long_words=False, break_on_hyphens=False)
            out.append(f"{local} = SimpleNamespace(  # `{local}.` in the package is module {source}.{name}\n    "
                       + "\n    ".join(rows) + "\n)")
        elif name in stand_ins:
            out.append(f"{local} = {stand_ins[name]}  # annotations only: the class is in its component's folder")
        elif defined.get(name) is not None:
            out += [f"{local} = {name}"] if local != name else []
        else:
            raise ValueError(f"{module}:{lineno}: `from {source} import {name}` does not resolve inside the bundle.")
    return out


def _render(class_name: str, bundle: Bundle, imports: dict[str, set[str]], sections) -> str:
    header = [
        f"# {class_name} for diffusers' `trust_remote_code=True`, generated by epg-diffusers {__version__} from its",
        f"# {', '.join(m.replace('.', '/') + '.py' for m in bundle.modules)}.",
        "# Do not edit: saving the pipeline with epg-diffusers writes this file again.",
        "",
    ]
    plain = sorted(k for k in imports if k.startswith("import "))
    froms = sorted(f"{k} import {', '.join(sorted(v))}" for k, v in imports.items() if k.startswith("from "))
    parts = ["\n".join(header + plain + froms)]
    parts += [f"# ---- {module.replace('.', '/')}.py ----\n\n{body.strip(chr(10))}" for module, body in sections]
    text = re.sub(r"\n{4,}", "\n\n\n", "\n\n\n".join(parts) + "\n")  # the dropped imports' blank lines
    compile(text, f"{bundle.file}.py", "exec")
    found = _DIFFUSERS_RELATIVE_IMPORT.findall(text)
    if found:
        raise ValueError(f"{bundle.file}.py would make diffusers look for relative imports: {found}")
    return text


def _dynamic_module_file(cls) -> str | None:
    """The file a class was loaded from when it came from generated code (diffusers' dynamic modules)."""
    module = inspect.getmodule(cls)
    return module.__file__ if module is not None and module.__name__.startswith("diffusers_modules.") else None


def write_remote_code(save_directory: str | os.PathLike, pipeline=None) -> list[str]:
    """Write the code files of a saved pipeline folder and point its ``model_index.json`` at them.

    Every entry whose class is one of this package's (``BUNDLES``) gets its generated file; when ``pipeline`` (the
    saved object) was itself loaded from generated code, those files are copied as they are. Other components
    (e.g. a diffusers scheduler) keep their entry: diffusers imports them from its own library. Returns the
    written paths, relative to the folder.
    """
    folder = Path(save_directory)
    index = json.loads((folder / "model_index.json").read_text())
    written = []
    for name, entry in sorted(index.items()):
        entry = [None, entry] if name == "_class_name" and isinstance(entry, str) else entry  # as diffusers saves it
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] in BUNDLES):
            continue
        obj = pipeline if name == "_class_name" else getattr(pipeline, name, None)
        copied = _dynamic_module_file(type(obj)) if obj is not None else None
        stem = Path(copied).stem if copied else BUNDLES[entry[1]].file
        target = folder / f"{stem}.py" if name == "_class_name" else folder / name / f"{stem}.py"
        target.write_text(Path(copied).read_text() if copied else bundle_source(entry[1]), encoding="utf-8")
        index[name] = [stem, entry[1]]
        written.append(str(target.relative_to(folder)))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


def has_remote_code(save_directory: str | os.PathLike) -> bool:
    """Whether every EPG entry of a saved pipeline's ``model_index.json`` names a code file that is there."""
    folder = Path(save_directory)
    index = json.loads((folder / "model_index.json").read_text())
    entries = {k: [None, v] if k == "_class_name" and isinstance(v, str) else v for k, v in index.items()}
    entries = {k: v for k, v in entries.items() if isinstance(v, list) and len(v) == 2 and v[1] in BUNDLES}
    return all((folder / (f"{v[0]}.py" if k == "_class_name" else f"{k}/{v[0]}.py")).is_file()
               for k, v in entries.items())


def package_entries(config: dict) -> dict:
    """Point a ``model_index.json`` dict that names generated files at this package's classes (in place).

    ``["pipeline_epg", "EPGPipeline"]`` becomes ``"EPGPipeline"`` and ``["transformer_epg", "EPGTransformer2DModel"]``
    becomes ``["epg_diffusers.models.transformer_epg", "EPGTransformer2DModel"]``; folders written by earlier
    versions (module paths already) are left as they are.
    """
    for key, value in list(config.items()):
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[1] in BUNDLES \
                and value[0] == BUNDLES[value[1]].file:
            module = _module_name(BUNDLES[value[1]].modules[-1])  # the module that defines the class
            config[key] = value[1] if key == "_class_name" else [module, value[1]]
    return config
