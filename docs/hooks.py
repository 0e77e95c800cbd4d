"""MkDocs hooks: leave out an API page whose object the package does not export yet.

The API reference names each public object (`::: adafilter_keras.NAME`), and mkdocstrings fails
the build on an object it cannot find. A page written ahead of its object is listed in
`OPTIONAL_PAGES`; while `adafilter_keras.__all__` lacks the name, the page and its nav entry are
left out. The package's source is read, not imported, as mkdocstrings reads it.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# API page (relative to docs/) -> the name of `adafilter_keras.__all__` it documents.
OPTIONAL_PAGES = {"api/settings.md": "GateSettings"}


def public_names():
    """The names of `adafilter_keras.__all__`, read from the source."""
    tree = ast.parse((ROOT / "adafilter_keras" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(target, "id", None) == "__all__" for target in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def left_out_pages():
    """The optional pages whose name `adafilter_keras.__all__` does not hold."""
    names = public_names()
    return {page for page, name in OPTIONAL_PAGES.items() if name not in names}


def _without(nav, pages):
    kept = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            kept.append({next(iter(item)): _without(value, pages)})
        elif value not in pages:
            kept.append(item)
    return kept


def on_config(config):
    """Drops the left-out pages from the nav."""
    pages = left_out_pages()
    if pages and config.nav:
        config.nav = _without(config.nav, pages)
    return config


def on_files(files, config):
    """Drops the left-out pages from the files MkDocs builds."""
    for page in left_out_pages():
        file = files.get_file_from_path(page)
        if file is not None:
            files.remove(file)
    return files
