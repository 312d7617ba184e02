"""Artifact folders: `config.json` + `model.safetensors`, versioned and fingerprinted.

Every component folder (AE, AR model, ...) carries the format version it was written with and a
content fingerprint (sha256 over tensor names, dtypes, shapes and bytes). Loading checks both, so
a folder from another format version or with a corrupted tensor fails loudly instead of loading
garbage. Nothing is pickled.

The component config (with the full transformers / diffusers config of every backbone as it was
loaded) is written twice: into `config.json`, and into the weights file's header, bound to the
tensors. `load_model` rebuilds the model from `config.json` and checks that config and weights
agree: every tensor's shape (a mismatch names the tensor and the config fields that size it), the
config the weights were written with (a field edited since is named), and that the config rebuilt
is the config stored (a field this transformers / diffusers does not honour is named).
docs/artifacts.md §2.1 says what each check catches and what none can.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import struct
from typing import Any, Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vgt import io as vio
from vgt.errors import VGTError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BOUND_CONFIG = "config"  # the weights header's copy of the component config (absent in older folders)
VERSION_KEYS = ("transformers_version", "_diffusers_version")  # provenance, not architecture
SHOWN = 5  # tensors / fields listed in one error message
log = logging.getLogger(__name__)


class ArtifactError(VGTError):
    """A folder is missing, of another format version, of another kind, or corrupted."""


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict: independent of file layout and insertion order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def save_component(folder: str, kind: str, config: dict, state_dict: dict[str, torch.Tensor],
                   extra: dict[str, Any] | None = None) -> str:
    """Write `folder/config.json` and `folder/model.safetensors`; returns the fingerprint."""
    tensors = _unshared(state_dict)
    fp = fingerprint(tensors)
    vio.makedirs(folder)
    vio.atomic_write_bytes(vio.join(folder, WEIGHTS_FILE),
                           st_save(tensors, metadata={"format_version": str(FORMAT_VERSION),
                                                      "fingerprint": fp, "kind": kind,
                                                      BOUND_CONFIG: json.dumps(config, sort_keys=True)}))
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "fingerprint": fp, "config": config}
    vio.write_json(vio.join(folder, CONFIG_FILE), {**meta, **(extra or {})})
    return fp


def read_component_config(folder: str, kind: str) -> dict:
    """The checked `config.json` of a component folder (no weights read)."""
    path = vio.join(folder, CONFIG_FILE)
    if not vio.exists(path):
        raise ArtifactError(f"{folder!r} is not a vgt {kind} folder: {CONFIG_FILE} is missing")
    meta = vio.read_json(path)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{folder!r} has format version {version!r}; this vgt reads version "
                            f"{FORMAT_VERSION}. Re-export it with a matching vgt release.")
    if meta.get("kind") != kind:
        raise ArtifactError(f"{folder!r} holds a {meta.get('kind')!r} component, not {kind!r}")
    return meta


def load_component(folder: str, kind: str) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config, state_dict, fingerprint) of a component folder, after checking version and content."""
    meta, state_dict, _ = _read_component(folder, kind)
    return meta["config"], state_dict, meta["fingerprint"]


def _read_component(folder: str, kind: str) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """(config.json, state dict, the config bound into the weights header or None), fingerprint checked."""
    meta = read_component_config(folder, kind)
    weights = vio.join(folder, WEIGHTS_FILE)
    if not vio.exists(weights):
        raise ArtifactError(f"{folder!r}: {WEIGHTS_FILE} is missing")
    data = vio.read_bytes(weights)
    try:
        state_dict = st_load(data)
        header = _header_metadata(data)
    except Exception as e:  # safetensors raises several types for truncated/garbled headers
        raise ArtifactError(f"{weights!r} is not a readable safetensors file: {e}") from e
    actual = fingerprint(state_dict)
    if actual != meta["fingerprint"]:
        raise ArtifactError(f"{weights!r} is corrupted: content fingerprint {actual} does not match "
                            f"{meta['fingerprint']} recorded in {CONFIG_FILE}")
    bound = header.get(BOUND_CONFIG)
    return meta, state_dict, None if bound is None else json.loads(bound)


def _header_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (8-byte little-endian header length, then JSON)."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


# -- loading a model: config and weights must agree ------------------------------------------------
def load_model(folder: str, kind: str, build: Callable[[dict], torch.nn.Module]) -> tuple[torch.nn.Module, str]:
    """(model with the folder's weights, fingerprint): the model `build(config)` makes from config.json.

    `build` must also work under `torch.device("meta")` (the field search of a shape mismatch rebuilds
    variants there), and the model must have `portable_config()`, the config it saves. Checks, in order
    (each failure is an ArtifactError naming the field):

    1. config.json builds a model at all;
    2. every tensor of the weights has the name and shape the config gives it: a mismatch names the
       tensor and the config fields that size it;
    3. config.json is the config the weights were written with (bound into the weights header);
    4. the config of the model built is the config stored: a field that this transformers / diffusers
       does not rebuild as stored is named (a field absent from the stored config, added by a later
       version, takes its default with a logged note).

    A folder written before configs were bound to the weights has no header copy: it loads with a
    logged note, check 3 is skipped and check 4 only warns (its config.json holds the presets'
    hand-written subset, not the full configs)."""
    meta, state_dict, bound = _read_component(folder, kind)
    config = meta["config"]
    if bound is None:
        log.info("%s was written before vgt bound the full backbone configs to the weights: it is rebuilt from "
                 "the config subset in its %s (shapes are still checked; re-save it to record the full "
                 "configs)", folder, CONFIG_FILE)
        edited = []
    else:
        edited = config_diff(_plain(bound), _plain(config))
    try:
        model = build(copy.deepcopy(config))
    except Exception as err:  # noqa: BLE001 - transformers / diffusers validation raises many types
        raise ArtifactError(f"{folder!r}: its {CONFIG_FILE} does not build a model: {type(err).__name__}: {err}"
                            + _edited_note(edited)) from err
    check_tensors(folder, model, state_dict, config, build, edited)
    if edited:
        raise ArtifactError(f"{folder!r}: {CONFIG_FILE} is not the config its weights were written with (saved "
                            f"in the {WEIGHTS_FILE} header):\n  " + "\n  ".join(_describe(edited, "in the weights' "
                            "header", f"in {CONFIG_FILE}")))
    drift = config_diff(_plain(config), _plain(model.portable_config()), subset=bound is None)
    # Fields a later version added (absent when the folder was written) are built with their defaults.
    added = [d for d in drift if d[1] is MISSING]
    if added:
        log.info("%s was written before these config fields existed; they take their defaults:\n  %s", folder,
                 "\n  ".join(_describe(added, f"in {CONFIG_FILE}", "built")))
        drift = [d for d in drift if d[1] is not MISSING]
    if drift and bound is not None:
        raise ArtifactError(f"{folder!r}: the model its {CONFIG_FILE} builds does not have that config (this "
                            f"{_versions()} does not rebuild it as stored):\n  "
                            + "\n  ".join(_describe(drift, f"in {CONFIG_FILE}", "built")))
    if drift:
        log.warning("%s: its hand-written config is not what this transformers / diffusers builds from it "
                    "(as when it was written: the weights fit):\n  %s", folder,
                    "\n  ".join(_describe(drift, f"in {CONFIG_FILE}", "built")))
    model.load_state_dict(state_dict, strict=True)
    return model, meta["fingerprint"]


def check_tensors(folder: str, model: torch.nn.Module, state_dict: dict[str, torch.Tensor], config: dict,
                  build: Callable[[dict], torch.nn.Module], edited: list | None = None) -> None:
    """Every tensor of `state_dict` has the name and shape it has in `model` (built from `config`), or
    an ArtifactError naming the tensors, the config fields that size them (`sizing_fields`) and the
    fields `edited` since the weights were written."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    wrong = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
    unexpected, missing = sorted(have.keys() - want.keys()), sorted(want.keys() - have.keys())
    if not (wrong or unexpected or missing):
        return
    shown = wrong[:SHOWN] + unexpected[:SHOWN] + missing[:SHOWN]
    sizes = sizing_fields(config, build, shown, present=set(wrong))
    lines = []
    for k in wrong[:SHOWN]:
        lines.append(f"{k}: the weights hold {list(have[k])}, the config builds {list(want[k])}"
                     f"{_sized_by(sizes[k], config, 'sized by')}")
    lines += _more(wrong)
    for what, keys in (("Unexpected in the weights (the config builds no such tensor)", unexpected),
                       ("Missing from the weights (the config builds it)", missing)):
        if keys:
            fields = sorted({f for k in keys[:SHOWN] for f in sizes[k]})
            lines.append(f"{what}: {', '.join(keys[:SHOWN])}{_more(keys, inline=True)}"
                         f"{_sized_by(fields, config, 'their number follows')}")
    fields = sorted({f for k in shown for f in sizes[k]})
    fits = fitting_changes(config, build, have, fields, [(want[k], have[k]) for k in wrong[:SHOWN]],
                           counts=bool(unexpected or missing))
    lines += [f"the weights fit config.{path} = {new!r} ({CONFIG_FILE} has {old!r})" for path, old, new in fits]
    raise ArtifactError(f"{folder!r}: weights do not fit the model its config builds:\n  " + "\n  ".join(lines)
                        + _edited_note(edited or []))


def sizing_fields(config: dict, build: Callable[[dict], torch.nn.Module], names: list[str],
                  present: set[str] = frozenset()) -> dict[str, list[str]]:
    """For each tensor name, the dotted config paths that size it (names in `present`: its shape) or
    decide whether it exists (the others).

    Found by experiment, not by a table: every integer field (and list of integers) is doubled and
    halved in turn, the model is rebuilt on the meta device, and a field counts for a tensor whose
    shape (or presence) that changes. Fields are first tried a whole sub-config at a time, and a
    sub-config where nothing of interest moves is skipped. A variant that does not build (e.g. one
    that breaks a divisibility rule) says nothing."""
    base = _meta_shapes(build, config)
    found: dict[str, list[str]] = {n: [] for n in names}
    if base is None:
        return found

    def changed(name: str, shapes: dict) -> bool:
        if name in present:  # a shape question: the tensor must still exist, with another shape
            return name in shapes and shapes[name] != base.get(name)
        return (name in shapes) != (name in base)

    def moved(leaves: list[tuple]) -> set[str] | None:
        """The names whose shape or presence doubling or halving `leaves` changes; None if a variant fails."""
        out, failed = set(), False
        for change in (_double, _halve):
            variant = _perturbed(config, leaves, change)
            shapes = None if variant is None else _meta_shapes(build, variant)
            if variant is not None and shapes is None:
                failed = True
            elif shapes is not None:
                out |= {n for n in names if changed(n, shapes)}
        return None if failed and not out else out

    groups: dict[tuple, list[tuple]] = {}
    for path, value in _int_leaves(config):
        groups.setdefault(path[:-1], []).append((path, value))
    for leaves in groups.values():
        if moved(leaves) == set():
            continue  # the whole sub-config builds in both variants and moves none of these tensors
        for leaf in leaves:
            for name in moved([leaf]) or ():
                found[name].append(".".join(map(str, leaf[0])))
    return found


def fitting_changes(config: dict, build: Callable[[dict], torch.nn.Module], have: dict[str, tuple],
                    fields: list[str], wrong: list[tuple[tuple, tuple]], counts: bool) -> list[tuple[str, Any, Any]]:
    """[(path, value now, value that fits)]: the single-field changes among `fields` (dotted paths; a list
    field is tried element by element) after which the config builds exactly the tensors `have`.

    Values tried: the field scaled by the ratio of each mismatching dimension in `wrong` ((shape built,
    shape held) pairs), and, when `counts` (tensors missing or unexpected), the field +-1..4."""
    fits = []
    for dotted in fields:
        value = _get(config, dotted)
        paths = [(dotted, value)] if not isinstance(value, list) else \
            [(f"{dotted}.{j}", v) for j, v in enumerate(value)]
        for path, v in paths:
            tries = {v * h // w for built, held in wrong for w, h in zip(built, held) if w != h and v * h % w == 0}
            if counts:
                tries |= {v + d for d in (-4, -3, -2, -1, 1, 2, 3, 4)}
            for new in sorted(t for t in tries if t > 0 and t != v):
                keys = tuple(int(k) if k.isdigit() else k for k in path.split("."))
                variant = _perturbed(config, [(keys, v)], lambda _, new=new: new)
                if variant is not None and _meta_shapes(build, variant) == have:
                    fits.append((path, v, new))
                    break
    return fits


PROVENANCE_KEYS = ("_name_or_path", "architectures", "dtype", "torch_dtype")  # where a config came from


def check_same_backbone(what: str, stored: dict, built: dict, path: str) -> None:
    """Refuse to put weights trained on one backbone config into a model built from another: every
    field of `stored` (the config the weights were trained with, e.g. an --init folder's) must be what
    `built` has (the config of the model built now, e.g. from the preset), apart from where each came
    from (`PROVENANCE_KEYS`: a hub id vs a local copy of the same checkpoint). ArtifactError names the fields."""
    drift = [d for d in config_diff(_plain(stored), _plain(built), path, subset=True)
             if d[0].rpartition(".")[2] not in PROVENANCE_KEYS]
    if drift:
        raise ArtifactError(f"{what} was trained with another backbone config than the one built here:\n  "
                            + "\n  ".join(_describe(drift, "in the folder", "built")))


def config_diff(a, b, path: str = "", subset: bool = False) -> list[tuple[str, Any, Any]]:
    """[(dotted path, value in a, value in b)] where two JSON configs differ; the `VERSION_KEYS` are
    ignored. `subset`: only the paths `a` has (b may hold more, e.g. the defaults a rebuild fills in)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | (set() if subset else set(b)), key=str):
            if key in VERSION_KEYS:
                continue
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append((sub, a.get(key, MISSING), b.get(key, MISSING)))
            else:
                out += config_diff(a[key], b[key], sub, subset)
        return out
    return [] if a == b and type(a) is type(b) or _same_number(a, b) else [(path, a, b)]


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING = _Missing()


def _same_number(a, b) -> bool:
    return (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _plain(config) -> Any:
    """JSON types only (tuples -> lists), as a config reads back from config.json."""
    return json.loads(json.dumps(config))


def _describe(diffs: list, left: str, right: str) -> list[str]:
    lines = [f"config.{path} = {a!r} {left}, {b!r} {right}" for path, a, b in diffs[:SHOWN]]
    return lines + _more(diffs)


def _edited_note(edited: list) -> str:
    if not edited:
        return ""
    return (f"\n  {CONFIG_FILE} differs from the config the weights were written with (the {WEIGHTS_FILE} header):"
            f"\n    " + "\n    ".join(_describe(edited, "then", "now")))


def _sized_by(fields: list[str], config: dict, verb: str) -> str:
    if not fields:
        return ""
    shown = [f"config.{f} = {_get(config, f)!r}" for f in fields[:SHOWN]]
    return f" ({verb} {', '.join(shown)}{_more(fields, inline=True)})"


def _more(items: list, inline: bool = False) -> list[str] | str:
    extra = len(items) - SHOWN
    if inline:
        return f" and {extra} more" if extra > 0 else ""
    return [f"... and {extra} more"] if extra > 0 else []


def _versions() -> str:
    from importlib.metadata import version

    return f"transformers {version('transformers')} / diffusers {version('diffusers')}"


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _int_leaves(node, path: tuple = ()):
    """(path, value) of every positive int and every non-empty list of positive ints (bools excluded)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _int_leaves(value, path + (key,))
    elif _is_count(node) or (isinstance(node, list) and node and all(_is_count(v) for v in node)):
        yield path, node


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _double(value):
    return [v * 2 for v in value] if isinstance(value, list) else value * 2


def _halve(value):
    if isinstance(value, list):
        return [v // 2 for v in value] if all(v >= 2 for v in value) else None
    return value // 2 if value >= 2 else None


def _perturbed(config: dict, leaves: list[tuple], change) -> dict | None:
    """`config` with each (path, value) leaf replaced by change(value) (None: left as is; None when no
    leaf changes). A layer count keeps its sibling `layer_types` list as long (transformers refuses a
    mismatch)."""
    out, changed = copy.deepcopy(config), False
    for path, value in leaves:
        new = change(value)
        if new is None:
            continue
        changed = True
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = new
        if path[-1] == "num_hidden_layers" and isinstance(parent.get("layer_types"), list) and parent["layer_types"]:
            types = parent["layer_types"]
            parent["layer_types"] = (types * (new // len(types) + 1))[:new]
    return out if changed else None


def _meta_shapes(build, config: dict) -> dict[str, tuple] | None:
    """{name: shape} of the model `config` builds on the meta device, or None when it does not build."""
    try:
        with torch.device("meta"):
            model = build(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - a variant that does not build tells nothing
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no shared storage (safetensors refuses tied tensors)."""
    seen: set[int] = set()
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out
