"""Build the ppdet model of one of our configs, for scripts, checks and the engine.

ppdet keeps every loaded config in one process-wide ``global_config`` and merges a new file into it
without deleting anything, so a second config would inherit keys of the first (a FocalLoss
``gamma`` left under a GHM loss block, a stale backbone option ...). :func:`load_config` therefore
resets that state before loading, then checks every configured module for keys its constructor
does not take, naming the file, instead of ppdet's ``TypeError`` deep inside ``create``.

Also here: the command line's ``-c`` / ``-o`` (:func:`add_config_arguments`, :func:`parse_overrides`),
and :func:`resolved_config`, what a loaded config means whatever its files look like (the configs'
snapshot test compares it).
"""

import logging
import os
from collections.abc import Sequence

import yaml
from ppdet.core import workspace
from ppdet.core.config.schema import SchemaDict

# Our modules are registered in ppdet's workspace by ``import ppdet_ghm``, which Python runs before
# this module (its package), so every config here finds them.

__all__ = [
    "add_config_arguments",
    "build_model",
    "load_config",
    "parse_overrides",
    "reset_config",
    "resolved_config",
]

logger = logging.getLogger(__name__)


def add_config_arguments(parser, required: bool = True, config_help: str = "config file (YAML)"):
    """``-c CONFIG`` and ``-o KEY=VALUE ...`` (read by :func:`parse_overrides`), as every
    command of ours and ppdet's ``tools/*.py`` take them."""
    parser.add_argument("-c", "--config", required=required, help=config_help)
    parser.add_argument(
        "-o",
        "--opt",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, ppdet style: dotted keys, YAML values (e.g. epoch=2 "
        "TrainReader.batch_size=4 weights=output/demo/model_final)",
    )


def parse_overrides(items: Sequence[str] | None) -> dict:
    """``["a.b=1", "weights=x"]`` -> ``{"a.b": 1, "weights": "x"}``: values parsed as YAML with
    ppdet's tags (``!PiecewiseDecay {...}``), keys kept dotted for ``builder.load_config``.
    Unlike ppdet, ``1e-3`` is a number (YAML 1.1 would leave it a string)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        parsed = yaml.load(value, Loader=yaml.Loader)  # ppdet registers its tags on this Loader
        if isinstance(parsed, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                parsed = float(parsed)
            except ValueError:
                pass
        overrides[key.strip()] = parsed
    return overrides


def reset_config():
    """Forget every loaded config value: registered modules keep only their constructor defaults."""
    config = workspace.global_config
    for key in list(config.keys()):
        value = dict.__getitem__(config, key)
        if isinstance(value, SchemaDict):
            value.clear()
        else:
            del config[key]


def _expand_dotted(overrides: dict) -> dict:
    """``{'A.b.c': 1}`` -> ``{'A': {'b': {'c': 1}}}``; nested dicts pass through."""
    expanded: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"override keys must be non-empty strings, got {key!r}")
        parts = key.split(".")
        node = expanded
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r} conflicts with another override")
        node[parts[-1]] = value
    return expanded


def _merge_overrides(target, overrides: dict, path: str, prefix: str = "", root=None):
    """Deep-merge ``overrides`` into ``target``; objects built by YAML tags (``!COCODataSet``) get
    their attributes set instead of being replaced by a dict, as ppdet's merge would. A component
    named by its module (``GHMRetinaHead.loss_cls: GHMCLoss``) takes the override in its own
    block: ``GHMRetinaHead.loss_cls.bins=20`` sets ``GHMCLoss.bins``, unless the override names
    another component (``GHMRetinaHead.loss_cls={name: SigmoidFocalLoss, ...}``)."""
    root = target if root is None else root
    for key, value in overrides.items():
        current = dict.get(target, key)
        named = dict.get(root, current) if isinstance(current, str) else None
        if isinstance(value, dict) and "name" not in value and isinstance(named, SchemaDict):
            _merge_overrides(named, value, path, f"{current}.", root)
        elif isinstance(value, dict) and isinstance(current, dict):
            _merge_overrides(current, value, path, f"{prefix}{key}.", root)
        elif isinstance(value, dict) and current is not None and hasattr(current, "__dict__"):
            for attr, attr_value in value.items():
                if not hasattr(current, attr):
                    raise ValueError(
                        f"{path}: override {prefix}{key}.{attr}: {type(current).__name__} has no "
                        f"attribute {attr!r}"
                    )
                setattr(current, attr, attr_value)
        else:
            target[key] = value


def _check_keys(config, path: str):
    """ValueError naming ``path`` for a key no constructor takes or an unregistered module."""
    for name, value in config.items():
        if isinstance(value, SchemaDict):
            _check_module(name, value, path)
        elif isinstance(value, dict) and name[:1].isupper() and not name.endswith("Reader"):
            raise ValueError(
                f"{path}: top-level block {name!r} is not a registered ppdet module "
                "(misspelt? ppdet would ignore it silently)"
            )


def _check_module(name: str, schema: SchemaDict, path: str):
    if schema.strict:
        unknown = sorted(set(schema.keys()) - set(schema.schema.keys()))
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) {unknown} for {name}; it takes {sorted(schema.schema)}"
            )
    for key in schema.inject:
        block = dict.get(schema, key)
        if not isinstance(block, dict):
            continue
        if "name" not in block:
            raise ValueError(
                f"{path}: {name}.{key} is a block without 'name' (ppdet would skip it silently); "
                f"to change the component {name} names, write its keys in that component's own "
                "top-level block"
            )
        target = dict.get(workspace.global_config, str(block["name"]))
        if not isinstance(target, SchemaDict):
            raise ValueError(
                f"{path}: {name}.{key} names {block['name']!r}, which is not a registered module"
            )
        if target.strict:
            unknown = sorted(set(block) - {"name"} - set(target.schema))
            if unknown:
                raise ValueError(
                    f"{path}: unknown key(s) {unknown} for {name}.{key} ({block['name']}); "
                    f"it takes {sorted(target.schema)}"
                )


def load_config(config_path: str, overrides: dict | None = None):
    """Load a ppdet YAML config (with its ``_BASE_`` files) into a freshly reset global config.

    Args:
        config_path: path of a ``.yml`` config.
        overrides: optional values merged on top, as nested dicts (``{'GHMRetinaHead':
            {'num_classes': 3}}``) or dotted keys (``{'GHMRetinaHead.num_classes': 3}``).

    Returns:
        ppdet's global config (an ``AttrDict``), as ``ppdet.core.workspace.load_config`` returns.

    Raises:
        FileNotFoundError: the config (or one of its bases) does not exist.
        ValueError: a key no module takes, a block naming no registered module.
    """
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config file not found: {config_path}")
    reset_config()
    try:
        config = workspace.load_config(config_path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{config_path}: a file it needs is missing: {err}") from err
    if overrides:
        _merge_overrides(config, _expand_dotted(overrides), config_path)
    _check_keys(config, config_path)
    logger.debug("loaded %s (architecture %s)", config_path, config.get("architecture"))
    return config


def build_model(config_path: str, overrides: dict | None = None):
    """The ppdet model of ``config_path`` (``create(cfg.architecture)``), in train mode.

    The model has ``.backbone``, ``.neck`` and ``.head`` and takes ppdet's input dict: ``image``
    [N, 3, H, W], ``im_shape`` [N, 2], ``scale_factor`` [N, 2] and, in training, ``gt_bbox`` /
    ``gt_class`` (per-image lists, or padded tensors with ``pad_gt_mask``). No weights are loaded.

    Args:
        config_path: path of a ``.yml`` config.
        overrides: see :func:`load_config`.

    Example (from the repository root):

    >>> from ppdet_ghm import build_model
    >>> model = build_model("configs/demo.yml", {"GHMRetinaHead.loss_cls.bins": 20})
    >>> type(model.head).__name__, model.head.loss_cls.bins, model.head.loss_bbox.mu
    ('GHMRetinaHead', 20, 0.02)
    """
    config = load_config(config_path, overrides)
    if "architecture" not in config:
        raise ValueError(f"{config_path}: no 'architecture' key")
    try:
        return workspace.create(config.architecture)
    except TypeError as err:
        raise ValueError(f"{config_path}: cannot build {config.architecture}: {err}") from err


def _plain(value):
    """JSON-able form of a config value (objects built by YAML tags: class name + attributes)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__dict__"):
        return {"__class__": type(value).__name__, **_plain(vars(value))}
    return repr(value)


def _resolve_module(config, name: str, given: dict | None = None) -> dict:
    """Every constructor argument of module ``name`` as ``create(name)`` would pass it: the value
    of its block (or of ``given``, an inline block), shared keys from the top level, defaults
    otherwise; components (injected, or the architecture's backbone / neck / head) resolved the
    same way, by inline block or by the name of their block."""
    schema = dict.__getitem__(config, name)
    given = given or {}
    out: dict = {"name": name}
    for key in sorted(schema.schema):
        if key in given:
            value = given[key]
        elif key in schema.shared and key in config and not isinstance(config[key], SchemaDict):
            value = config[key]
        else:
            value = (
                schema[key] if (dict.__contains__(schema, key) or schema.has_default(key)) else None
            )
        if key in schema.inject and isinstance(value, dict) and "name" in value:
            inline = {k: v for k, v in value.items() if k != "name"}
            value = _resolve_module(config, str(value["name"]), inline)
        elif isinstance(value, str) and isinstance(dict.get(config, value), SchemaDict):
            value = _resolve_module(config, value)  # injected by name, or from_config's create
        out[key] = _plain(value)
    return out


def resolved_config(config) -> dict:
    """What a loaded config means, independent of how its files spell it: the architecture's
    module tree with every argument resolved (:func:`_resolve_module`), the learning rate,
    optimizer and readers the same way, and every other top-level value as it is. Two configs with
    equal resolved configs build the same model and train the same way."""
    out = {}
    for key in sorted(config):
        value = dict.__getitem__(config, key)
        if isinstance(value, SchemaDict):
            continue
        out[key] = _plain(value)
    out["architecture"] = _resolve_module(config, str(config["architecture"]))
    for name in ("LearningRate", "OptimizerBuilder", "TrainReader", "EvalReader", "TestReader"):
        if isinstance(dict.get(config, name), SchemaDict):
            out[name] = _resolve_module(config, name)
    return out
