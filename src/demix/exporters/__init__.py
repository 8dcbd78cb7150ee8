"""Exporters: the chosen mixture (``best_mixture.json``) in the format each trainer reads.

What is exported is the **data mixture** by default (``best.mixture("data")``): the token shares
of the training data the winning proxies stand for, what a user trains on. ``--weights
components`` exports the **component weights** instead (the merge coefficients of the proxies),
for users who know why; every file that can hold a comment starts with one saying which of the
two it holds, and ``demix export`` says it in its message. Token counts and epochs written by
any format come from the data mixture.

Each format is what the current release of its trainer reads (``trainer`` on each class, the
table in docs/exporters.md); ``tests/exporters`` loads every one with the trainer's own classes.
Every exporter states the unit of the numbers it writes:

- *token share*: the fraction of training tokens drawn from a domain (a data mixture).
  Trainers that sample fixed-length sequences (Megatron, NeMo, Megatron-Bridge, nanotron,
  OLMo-core, MosaicML streams of concatenated tokens, litdata ``TokensLoader``, torchtitan's
  packed sources) take token shares directly.
- *document probability*: the chance that the next example comes from a domain, where an
  example is one document (HF ``interleave_datasets``). Converted from the data mixture's token
  shares with the mean document length: p_d is proportional to data_d / mean_tokens_per_document_d.

Data locations are given per domain (``--data-prefix general=/data/general_text_document``); a
domain without one is an error (the trainer would fail much later on a path named after the
domain) unless ``--allow-placeholder-paths`` asks for the names as stand-ins.

Layout: :mod:`.base` holds the checked :class:`Export` record, the registry, the unit notes and
the path rules every format shares, and the plain ``json`` format; one module per trainer family
holds its formats (:mod:`.megatron`: Megatron-LM, Megatron-Bridge, NeMo, nanotron;
:mod:`.olmo`: OLMo-core; :mod:`.streaming`: HF datasets, MosaicML, litdata, torchtitan).
Importing this package registers them all.
"""

from __future__ import annotations

from demix.exporters.base import (
    COMPONENTS,
    DATA,
    LENIENT,
    WEIGHT_KINDS,
    Export,
    Exporter,
    ExportOptions,
    check_weights_kind,
    export,
    exported_mixture,
    exporter_names,
    get_exporter,
    load_best_mixture,
    mixture_label,
    parse_prefixes,
    register,
    repetition_warning,
    sum_to_one,
)

# The family modules register their formats on import, in the order of `--to`'s list.
from demix.exporters.megatron import (
    MegatronBridgeExporter,
    MegatronExporter,
    MegatronPerSplitExporter,
    NanotronExporter,
    Nemo1Exporter,
    Nemo2Exporter,
)
from demix.exporters.olmo import OlmoCoreExporter, OlmoCoreSourcesExporter
from demix.exporters.streaming import HfDatasetsExporter, LitdataExporter, MosaicExporter, TorchtitanExporter

__all__ = [
    "COMPONENTS", "DATA", "LENIENT", "WEIGHT_KINDS", "Export", "ExportOptions", "Exporter", "HfDatasetsExporter",
    "LitdataExporter", "MegatronBridgeExporter", "MegatronExporter", "MegatronPerSplitExporter", "MosaicExporter",
    "NanotronExporter", "Nemo1Exporter", "Nemo2Exporter", "OlmoCoreExporter", "OlmoCoreSourcesExporter",
    "TorchtitanExporter", "check_weights_kind", "export", "exported_mixture", "exporter_names", "get_exporter",
    "load_best_mixture", "mixture_label", "parse_prefixes", "register", "repetition_warning", "sum_to_one",
]
