"""Sphinx extension of the book: every inline script once per page.

Sphinx 7.4 lists an inline script twice when an extension adds it after the HTML builder has
started (sphinx-thebe's configuration, sphinx-togglebutton's selector): once as added, with
filename ``None``, and once from the registry, with filename ``""``, which it does not take for
the same script. The second ``const THEBE_JS_URL`` then stopped with a SyntaxError in every
page's console.
"""

from __future__ import annotations


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context`` handler: keep the first of scripts equal but for ``None``/``""``."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = (getattr(js, "filename", js) or "", getattr(js, "priority", None),
               tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def setup(app):
    # after other handlers (priority 500) that add scripts to the page
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
