"""Finding a diffusers pipeline named by a hub id, for ``swiftfusion generate --model``: the
local cache first, then the hub, after a quick check that it answers (the hub client's own
retries take half a minute when there is no network). A name meant as a local folder is never
looked up on the hub."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from urllib.parse import urlparse

HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$")
HUB_PROBE_TIMEOUT_S = 5.0
Config = dict  # a pipeline's model_index.json or a component's config.json


def looks_like_path(model: str) -> bool:
    """A name a user means as a folder: ``./x``, ``/x``, ``~/x``, ``x/y/z``, or ``x/y`` where ``x`` is
    a local folder. Such a name is never looked up on the hub."""
    if model.startswith((".", "/", "~")) or model.endswith("/") or model.count("/") > 1:
        return True
    return "/" in model and os.path.isdir(model.split("/", 1)[0])


def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached (None when it can): a TCP connection to its host, given a
    few seconds, instead of the hub client's retries that take half a minute offline."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error.strerror or str(error))

    thread = threading.Thread(target=probe, daemon=True)  # name resolution itself has no timeout
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"no answer in {HUB_PROBE_TIMEOUT_S:.0f} s"


def hub_config(model: str, subfolder: str | None = None) -> Config:
    """``model_index.json`` (or a component's ``config.json``) of a hub id: from the local cache
    when it is there, else downloaded after a quick check that the hub answers."""
    from huggingface_hub import constants, hf_hub_download

    name = "config.json" if subfolder else "model_index.json"

    def load(**kwargs) -> Config:
        with open(hf_hub_download(model, name, subfolder=subfolder, **kwargs)) as f:
            return json.load(f)

    try:
        return load(local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: ask the hub below
        pass
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"--model {model!r} is not a local folder and not in the hub cache (HF_HUB_OFFLINE is set)")
    # Behind a proxy a direct connection proves nothing: the hub client's own requests decide.
    proxied = any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    why = None if proxied else hub_unreachable_reason()
    if why is not None:
        raise ValueError(f"--model {model!r} is not a local folder, and the hub ({constants.ENDPOINT}) cannot be "
                         f"reached: {why}. Give the path of a pipeline folder, or download the model first")
    try:
        return load()
    except Exception as error:  # noqa: BLE001 - any failure to find it means the same to the user
        raise ValueError(f"--model {model!r}: the hub has no {name} for it ({type(error).__name__})") from None
