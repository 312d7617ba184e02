"""Converters from the reference implementation's (hustvl/VGT) checkpoints to vgt folders."""
from vgt.convert.reference import ConversionReport, convert_reference_ae, load_reference_state, map_reference_ae

__all__ = ["ConversionReport", "convert_reference_ae", "load_reference_state", "map_reference_ae"]
