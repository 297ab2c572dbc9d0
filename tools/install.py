"""Install braincap and its dependencies into the running interpreter's environment.

``make setup`` runs ``.venv/bin/python tools/install.py``. It installs with `uv
<https://docs.astral.sh/uv/>`_ (itself installed by pip into the environment first), which
fetches and unpacks packages in parallel, and falls back to pip where uv cannot be used. Both
install the same pins: ``torch==2.13.0`` first in the resolution (a CPU build here, the CUDA
build of the same version on a GPU machine) and the project with its ``dev`` extras, editable.

pip's configuration (``pip.conf``, ``PIP_*`` variables: extra indexes, find-links, constraints)
is passed on to uv, which does not read it, with pip's rule of taking the best version over all
indexes. A setting this translation does not know, one that changes what pip would install
(``no-binary``, ``require-hashes``, ...), makes the installer use pip, which honours it: the set-up
never installs something other than what pip would. ``BRAINCAP_INSTALLER=pip`` forces pip.

Measured on a 2-core machine with warm caches (2026-11-29): pip 113 s (its byte-compilation of
every module included), uv 46 s (byte-compiled too).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

#: What ``make setup`` installs, in one resolution.
REQUIREMENTS = ["torch==2.13.0", "-e", ".[dev]"]

#: pip settings and the uv options that mean the same; values may list several entries.
_LIST_OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
#: pip settings that do not change what gets installed (handled as environment, or moot).
_HARMLESS = {
    "cert", "timeout", "default-timeout", "disable-pip-version-check", "no-cache-dir",
    "cache-dir", "progress-bar", "quiet", "verbose", "no-color", "no-input", "retries",
    "root-user-action", "proxy", "no-warn-script-location", "upgrade-strategy",
}


def read_pip_config(python: str = sys.executable) -> dict[str, str]:
    """pip's effective settings of the ``global``, ``install`` and environment scopes.

    Returns
    -------
    settings : dict
        Setting name (``extra-index-url``) -> raw value; the ``install`` scope overrides
        ``global``, and ``PIP_*`` variables override both, as in pip.
    """
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, check=True).stdout
    scopes: dict[str, dict[str, str]] = {"global": {}, "install": {}, ":env:": {}}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if sep and scope in scopes:
            scopes[scope][name] = value.strip().strip("'\"")
    return {**scopes["global"], **scopes["install"], **scopes[":env:"]}


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]] | None:
    """uv ``pip install`` options and environment meaning what pip's ``settings`` mean.

    Parameters
    ----------
    settings : dict
        From :func:`read_pip_config`.

    Returns
    -------
    (options, environment) or None
        ``None`` when a setting has no translation here and could change what is installed.
    """
    options = ["--compile-bytecode", "--index-strategy", "unsafe-best-match"]
    environment = {}
    for name, value in settings.items():
        if name in _LIST_OPTIONS:
            for entry in value.split():
                options += [_LIST_OPTIONS[name], entry]
        elif name == "no-index":
            if value.lower() in ("1", "true", "yes", "on"):
                options.append("--no-index")
        elif name == "cert":
            environment["SSL_CERT_FILE"] = value
        elif name in ("timeout", "default-timeout"):
            environment["UV_HTTP_TIMEOUT"] = value
        elif name not in _HARMLESS:
            return None
    return options, environment


def run(command: list[str], environment: dict[str, str] | None = None) -> bool:
    """Run ``command`` (echoed); True when it succeeded."""
    print("+", shlex.join(command), flush=True)
    env = {**os.environ, **(environment or {})}
    return subprocess.run(command, env=env).returncode == 0


def install_with_pip(python: str) -> None:
    """The plain route: pip installs torch, then the project (exits on failure)."""
    for step in (["--upgrade", "pip"], REQUIREMENTS[:1], REQUIREMENTS[1:]):
        if not run([python, "-m", "pip", "install", "-q", *step]):
            sys.exit("set-up failed: pip install " + " ".join(step))


def install_with_uv(python: str) -> bool:
    """The fast route; False (nothing harmed) when uv cannot be used here."""
    translated = uv_arguments(read_pip_config(python))
    if translated is None:
        print("install: a pip setting has no uv equivalent here; installing with pip")
        return False
    if not run([python, "-m", "pip", "install", "-q", "uv"]):
        print("install: uv could not be installed; installing with pip")
        return False
    options, environment = translated
    uv = os.path.join(os.path.dirname(python), "uv")
    if run([uv, "pip", "install", "-q", "--python", python, *options, *REQUIREMENTS],
           environment):
        return True
    print("install: uv failed (above); installing with pip")
    return False


def main() -> None:
    python = sys.executable
    if os.environ.get("BRAINCAP_INSTALLER", "uv") == "pip" or not install_with_uv(python):
        install_with_pip(python)


if __name__ == "__main__":
    main()
