"""The TFDS catalog as a data source that fails fast when offline.

A prepared dataset is read directly. An unprepared one is downloaded only if a
3-second connection test succeeds; otherwise the caller's error type is raised at
once, naming the offline data-directory alternative (never minutes of retries).
"""

from __future__ import annotations

import socket
from typing import Any


def online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Whether the TFDS download host answers within `timeout` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def prepared_builder(name: str, data_dir: str | None, error: type[Exception]) -> Any:
    """A prepared TFDS builder for `name` (downloading it when online); raises `error` otherwise."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name, missing config, ...
        raise error(f"TFDS dataset {name!r} cannot be built: {e}") from e
    if builder.is_prepared():
        return builder
    if not online():
        raise error(f"TFDS dataset {name!r} is not prepared and there is no internet connection; use the offline "
                    f"data directory instead: --config.data.data_dir=/path/to/data or $JAXPRUNE_DATA_DIR "
                    f"(laid out like shared/data)")
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise error(f"TFDS dataset {name!r} could not be prepared ({e}); use the offline data directory "
                    f"instead (--config.data.data_dir or $JAXPRUNE_DATA_DIR)") from e
    return builder
