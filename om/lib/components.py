# SPDX-License-Identifier: GPL-3.0-or-later
"""Finding the classes named in the ``om`` group of ``monitor.yaml``.

A short name (``Jungfrau1MZmqDataRetrieval``) is looked up among the classes om ships; a
dotted path (``mypackage.mymodule.MyDataRetrieval``) loads a user's own class, so a new detector
or analysis is one new class and one line of configuration.
"""

import importlib
from typing import Any

from om.lib.exceptions import OmConfigurationError

KNOWN_CLASSES: dict[str, str] = {
    "MpiParallelization": "om.parallelization_layer.mpi",
    "Jungfrau1MZmqDataRetrieval": "om.data_retrieval_layer.data_retrieval_jungfrau_zmq",
    "CrystallographyProcessing": "om.processing_layer.crystallography",
    "StreamingReceiverDataRetrieval": "om.data_retrieval_layer.data_retrieval_streaming_receiver",
    "DectrisStreamDataRetrieval": "om.data_retrieval_layer.data_retrieval_dectris_stream",
    "Hdf5FilesDataRetrieval": "om.data_retrieval_layer.data_retrieval_files",
}


def resolve_class(name: str, *, key: str, filename: str) -> Any:
    """Returns the class ``name`` configured at ``om/<key>`` of ``filename``.

    Raises:
        OmConfigurationError: naming the key and the file when the class cannot be found.
    """
    if name in KNOWN_CLASSES:
        module_name, class_name = KNOWN_CLASSES[name], name
    elif "." in name:
        module_name, _, class_name = name.rpartition(".")
    else:
        known = ", ".join(sorted(KNOWN_CLASSES))
        raise OmConfigurationError(
            f"{filename}: om/{key}: unknown class {name!r} (known: {known}, or a dotted path)"
        )
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise OmConfigurationError(f"{filename}: om/{key}: cannot load {name!r}: {error}")
