"""The figure tool's settings: one typed object, read from JSON, the command line, or built by the app.

``FigureSettings`` is the only settings format: the app builds one and writes ``to_json()`` into its
export bundle; ``python -m mgnet.figures --settings`` reads it back with ``from_json`` (and every
sidecar the tool writes is ``to_json()`` too, so a sidecar reproduces its run). The schema is described
in docs/figures.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import attacks, corruptions
from .. import explain

REPO = Path(__file__).resolve().parent.parent.parent
SCHEMA = "mgnet-figures/1"
DEFAULT_CHECKPOINTS = {
    "mgnet": "checkpoints/mgnet-resnet18-imagenette.pt",
    "baseline": "checkpoints/baseline-resnet18-imagenette.pt",
}
ROLES = ("mgnet", "baseline")
ROLE_LABELS = {"mgnet": "MGNet", "baseline": "Baseline"}
COMMANDS = ("figures", "metrics")
FIGURE_KINDS = ("strip", "grid", "robustness")
FORMATS = ("png", "svg", "pdf", "html")
WIDTHS = {"column": 3.5, "page": 7.0}  # inches: one column / full width of a two-column paper
DEFAULT_WIDTH = {"strip": "column", "grid": "page", "robustness": "page"}
# every attack of the registry but the worst-case ensemble (a figure row shows one attack's image)
ATTACK_METHODS = tuple(m for m in attacks.METHODS if m != "worst")
ATTACK_SOURCES = ("mgnet", "baseline", "each")
FILLS = ("blur", "black")
DEFAULT_METHODS = ("saliency", "integrated_gradients", "gradcam")
METRICS_LIMIT = 50  # images the metrics command uses by default
# keys a sidecar or manifest holds besides the settings; reading one back ignores them quietly
SIDECAR_ONLY = (
    "figure",
    "files",
    "image_records",
    "environment",
    "export_problem",
    "summary",
    "records",
    "data",
    "app",
)


class UsageError(Exception):
    """Bad arguments, settings or inputs: reported as ``error: ...`` with exit status 2."""


def note(message: str):
    print(f"mgnet.figures: {message}", file=sys.stderr)


# -- the parts -------------------------------------------------------------------------------------------
@dataclass
class CheckpointRef:
    """A checkpoint file and the sha256 it must have (None: not checked)."""

    path: str
    sha256: str | None = None
    file: Path | None = field(default=None, compare=False)  # the resolved file; not written

    @classmethod
    def from_json(cls, value, role: str) -> "CheckpointRef":
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict) or not value.get("path"):
            raise UsageError(f"settings checkpoints.{role} must be {{'path': ..., 'sha256': ...}} or null.")
        return cls(str(value["path"]), value.get("sha256"))

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclass
class Corruption:
    """One corruption row of the robustness figure. ``seed`` None: the run's seed."""

    name: str = "gaussian_noise"
    severity: int = 3
    seed: int | None = None

    @classmethod
    def from_json(cls, spec) -> "Corruption":
        if isinstance(spec, str):
            name, _, severity = spec.partition(":")
            spec = {"name": name, "severity": severity or 3}
        if not isinstance(spec, dict) or "name" not in spec:
            raise UsageError(f"a corruption is NAME:SEVERITY or {{'name': ..., 'severity': ...}}, got {spec!r}.")
        try:
            severity = int(spec.get("severity", 3))
            seed = None if spec.get("seed") is None else int(spec["seed"])
        except (TypeError, ValueError):
            raise UsageError(f"corruption severity must be an integer 1-5, got {spec.get('severity')!r}.") from None
        return cls(str(spec["name"]), severity, seed)

    def validate(self):
        if self.name not in corruptions.ALL_CORRUPTIONS:
            raise UsageError(f"unknown corruption {self.name!r}; choose from {', '.join(corruptions.ALL_CORRUPTIONS)}.")
        if not 1 <= self.severity <= 5:
            raise UsageError(f"corruption severity must be 1-5, got {self.severity}.")


@dataclass
class Attack:
    """One attack row of the robustness figure (untargeted). eps and step_size in units of 1/255;
    ``source``: the model whose gradients craft it (mgnet, baseline, or each model white-box);
    ``seed`` None: the run's seed."""

    method: str = "pgd"
    eps: float = 2.0
    steps: int = 10
    norm: str = "linf"
    source: str = "mgnet"
    true_grad: bool = False
    step_size: float | None = None
    random_start: bool = True
    seed: int | None = None
    queries: int | None = None  # Square's query budget (None: the registry's default)

    def options(self) -> dict:
        """This row's options that its method takes (None: the registry's default)."""
        return attacks.method_options(
            self.method,
            steps=self.steps,
            step_size=self.step_size,
            norm=self.norm,
            random_start=self.random_start,
            queries=self.queries,
        )

    @classmethod
    def from_json(cls, spec) -> "Attack":
        if not isinstance(spec, dict):
            raise UsageError(f"an attack must be an object like {{'method': 'pgd', 'eps': 2}}, got {spec!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise UsageError(f"attack has unknown keys {sorted(unknown)}; known: {sorted(known)}.")
        given = {k: v for k, v in spec.items() if v is not None or k in ("step_size", "seed")}
        attack = cls(**given)
        attack.method = str(attack.method).strip().lower().replace("_", "-")  # the registry's spelling
        attack.norm = str(attack.norm).lower()
        try:
            attack.eps, attack.steps = float(attack.eps), int(attack.steps)
            attack.step_size = None if attack.step_size is None else float(attack.step_size)
            attack.seed = None if attack.seed is None else int(attack.seed)
            attack.queries = None if attack.queries is None else int(attack.queries)
        except (TypeError, ValueError):
            raise UsageError(f"attack eps, steps and step_size must be numbers, got {spec!r}.") from None
        attack.true_grad, attack.random_start = bool(attack.true_grad), bool(attack.random_start)
        return attack

    def validate(self):
        if self.method not in ATTACK_METHODS:
            raise UsageError(f"unknown attack {self.method!r}; choose from {', '.join(ATTACK_METHODS)}.")
        if not (0 <= self.eps <= 255) or self.steps < 1 or (self.queries is not None and self.queries < 1):
            raise UsageError(f"attack eps must be in [0, 255] (units of 1/255) and steps >= 1, got {self}.")
        if self.norm not in ("linf", "l2"):
            raise UsageError(f"attack norm must be 'linf' or 'l2', got {self.norm!r}.")
        if self.source not in ATTACK_SOURCES:
            raise UsageError(f"attack source must be one of {ATTACK_SOURCES}, got {self.source!r}.")


def width_inches(width) -> float | None:
    """'column', 'page' or a number of inches (1-20); None stays None (each figure's default)."""
    if width is None:
        return None
    if isinstance(width, str) and width in WIDTHS:
        return WIDTHS[width]
    try:
        inches = float(width)
    except (TypeError, ValueError):
        raise UsageError(f"--width must be 'column', 'page' or a number of inches, got {width!r}.") from None
    if not 1.0 <= inches <= 20.0:
        raise UsageError(f"--width must be between 1 and 20 inches, got {inches}.")
    return inches


@dataclass
class Output:
    formats: list = field(default_factory=lambda: ["png", "svg"])
    dpi: int = 300
    width: str | float | None = None  # 'column', 'page', inches, or None (column for strips, page for grids)
    font_size: float = 8.0
    grid_rows: int = 6
    titles: bool = False

    @classmethod
    def from_json(cls, value) -> "Output":
        if not isinstance(value, dict):
            raise UsageError("settings 'output' must be an object.")
        out = cls(**{f.name: value[f.name] for f in dataclasses.fields(cls) if value.get(f.name) is not None})
        out.formats = list(dict.fromkeys(str(f).lower() for f in as_list(out.formats, "formats")))
        try:
            out.dpi, out.font_size, out.grid_rows = int(out.dpi), float(out.font_size), int(out.grid_rows)
        except (TypeError, ValueError):
            raise UsageError("dpi, font_size and grid_rows must be numbers.") from None
        if isinstance(out.width, str) and out.width not in WIDTHS:
            width_inches(out.width)  # refuses anything that is not a number
            out.width = float(out.width)
        out.titles = bool(out.titles)
        return out

    def validate(self):
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise UsageError(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}.")
        if not 50 <= self.dpi <= 1200:
            raise UsageError("--dpi must be between 50 and 1200.")
        if not 4 <= self.font_size <= 24:
            raise UsageError("--font-size must be between 4 and 24 points.")
        if self.grid_rows < 1:
            raise UsageError("--grid-rows must be >= 1.")
        width_inches(self.width)

    def width_px(self, kind: str, px_per_inch: float) -> float:
        return width_inches(self.width or DEFAULT_WIDTH[kind]) * px_per_inch


def as_list(value, name: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, dict, int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UsageError(f"{name} must be a list, got {type(value).__name__}.")


# -- the settings ----------------------------------------------------------------------------------------
@dataclass
class FigureSettings:
    """Everything a run of ``python -m mgnet.figures`` depends on (besides the device).

    ``target``: None (each model explains its own prediction), "mgnet" (every model explains MGNet's
    prediction), a class index or a class name. ``seed`` seeds explanations, random maps, and every
    corruption or attack whose own ``seed`` is None. ``steps`` .. ``sensitivity`` belong to the metrics
    command only; ``figures``, ``corruptions`` and ``attacks`` to the figures command only.
    """

    command: str = "figures"
    checkpoints: dict = field(default_factory=lambda: {r: CheckpointRef(p) for r, p in DEFAULT_CHECKPOINTS.items()})
    images: list = field(default_factory=list)
    limit: int | None = None
    figures: list = field(default_factory=lambda: list(FIGURE_KINDS))
    models: list = field(default_factory=lambda: list(ROLES))
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    method_options: dict = field(default_factory=dict)
    target: str | int | None = None
    n_glimpses: int | None = None
    s_grad: float | None = None
    seed: int = 0
    topk: float = 0.2
    batch_size: int = 8
    corruptions: list = field(default_factory=lambda: [Corruption()])
    attacks: list = field(default_factory=lambda: [Attack()])
    steps: int = 20
    fill: str = "blur"
    infidelity: bool = True
    sensitivity: bool = False
    output: Output = field(default_factory=Output)
    image_files: list = field(default_factory=list, compare=False)  # resolved paths of ``images``; not written

    # -- reading ------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, doc: dict, command: str | None = None) -> "FigureSettings":
        """Settings from a JSON object (an app export, a sidecar, or one written by hand); validated.
        Keys left out take their defaults."""
        if not isinstance(doc, dict):
            raise UsageError("settings must be a JSON object.")
        command = command or doc.get("command") or "figures"
        ignored = sorted(k for k in doc if k not in _KNOWN_KEYS)
        if ignored:
            note(f"settings file: ignoring keys {', '.join(ignored)}")
        s = cls(command=command)
        s.checkpoints = _checkpoints_from_json(doc.get("checkpoints"))
        images = doc.get("images", doc.get("image"))
        if command == "metrics" and isinstance(doc.get("data"), str):
            images = doc["data"]
        s.images = [str(p) for p in as_list(images, "images")]
        s.limit = _get(doc, "limit", METRICS_LIMIT if command == "metrics" else None, int)
        s.figures = [str(f) for f in as_list(_get(doc, "figures", s.figures), "figures")]
        s.models = [str(m) for m in as_list(_get(doc, "models", s.models), "models")]
        if s.checkpoints.get("baseline") is None:
            s.models = [m for m in s.models if m != "baseline"]
        s.methods = [str(m) for m in as_list(_get(doc, "methods", s.methods), "methods")]
        if s.methods == ["none"]:
            s.methods = []
        s.method_options = doc.get("method_options") or {}
        target = doc.get("target")
        s.target = int(target) if isinstance(target, str) and target.lstrip("-").isdigit() else target
        s.n_glimpses = _get(doc, "n_glimpses", None, int)
        s.s_grad = _get(doc, "s_grad", None, float)
        s.seed = _get(doc, "seed", 0, int)
        s.topk = _get(doc, "topk", s.topk, float)
        s.batch_size = _get(doc, "batch_size", s.batch_size, int)
        if "corruptions" in doc or "corruption" in doc:
            s.corruptions = [
                Corruption.from_json(c) for c in as_list(doc.get("corruptions", doc.get("corruption")), "corruptions")
            ]
        if "attacks" in doc or "attack" in doc:
            s.attacks = [Attack.from_json(a) for a in as_list(doc.get("attacks", doc.get("attack")), "attacks")]
        s.steps = _get(doc, "steps", s.steps, int)
        s.fill = str(_get(doc, "fill", s.fill))
        s.infidelity = bool(_get(doc, "infidelity", s.infidelity))
        s.sensitivity = bool(_get(doc, "sensitivity", s.sensitivity))
        s.output = Output.from_json(doc.get("output") or {})
        s.validate()
        return s

    @classmethod
    def read(cls, path, command: str | None = None) -> tuple["FigureSettings", Path]:
        """Settings from a JSON file, and the file's folder (relative paths in it are resolved there)."""
        return cls.from_json(read_json(path), command), Path(path).resolve().parent

    # -- checking -----------------------------------------------------------------------------------------
    def validate(self) -> "FigureSettings":
        """Refuse anything the tool cannot run (UsageError with a message naming the option)."""
        if self.command not in COMMANDS:
            raise UsageError(f"unknown command {self.command!r}; choose from {', '.join(COMMANDS)}.")
        if self.checkpoints.get("mgnet") is None:
            raise UsageError("an MGNet checkpoint is needed (--mgnet PATH).")
        if not self.images:
            option = "--data FOLDER" if self.command == "metrics" else "--images FOLDER_OR_FILES"
            raise UsageError(f"no images given: pass {option} or a settings file with 'images'.")
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be >= 0 (0 = all images).")
        self._validate_what()
        if self.n_glimpses is not None and not 1 <= self.n_glimpses <= 16:
            raise UsageError("--n-glimpses must be between 1 and 16.")
        if not 0 < self.topk <= 1:
            raise UsageError("--topk must be in (0, 1].")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be >= 1.")
        for spec in self.corruptions + self.attacks:
            spec.validate()
        if not 1 <= self.steps <= 1000:
            raise UsageError("--steps must be between 1 and 1000.")
        if self.fill not in FILLS:
            raise UsageError("--fill must be 'blur' or 'black'.")
        self.output.validate()
        return self

    def _validate_what(self):
        """Figure kinds, model roles, methods and their options."""
        bad = [f for f in self.figures if f not in FIGURE_KINDS]
        if bad or not self.figures:
            raise UsageError(f"unknown figure kind(s) {bad}; choose from {', '.join(FIGURE_KINDS)}.")
        bad = [m for m in self.models if m not in ROLES]
        if bad:
            raise UsageError(f"unknown model role(s) {bad}; choose from {', '.join(ROLES)}.")
        bad = [m for m in self.methods if m not in explain.METHODS]
        if bad:
            raise UsageError(f"unknown method(s) {bad}; choose from {', '.join(explain.METHODS)} (or 'none').")
        options = self.method_options
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise UsageError("settings 'method_options' must map a method name to an object of options.")
        for method, given in options.items():
            try:
                explain.resolve_options(method, 224, given)
            except ValueError as exc:
                raise UsageError(f"method_options: {exc}") from None

    # -- writing ------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The settings as a JSON object: what sidecars and the app's export hold, and ``from_json`` reads."""
        doc = {
            "schema": SCHEMA,
            "command": self.command,
            "checkpoints": {r: (ref.to_json() if ref is not None else None) for r, ref in self.checkpoints.items()},
            "images": list(self.images),
            "limit": self.limit,
        }
        if self.command == "figures":
            doc["figures"] = list(self.figures)
        doc.update(
            models=list(self.models),
            methods=list(self.methods),
            method_options={m: dict(o) for m, o in self.method_options.items()},
            target=self.target,
            n_glimpses=self.n_glimpses,
            s_grad=self.s_grad,
            seed=self.seed,
            topk=self.topk,
            batch_size=self.batch_size,
        )
        if self.command == "figures":
            doc["corruptions"] = [dataclasses.asdict(c) for c in self.corruptions]
            doc["attacks"] = [dataclasses.asdict(a) for a in self.attacks]
        else:
            doc.update(steps=self.steps, fill=self.fill, infidelity=self.infidelity, sensitivity=self.sensitivity)
        doc["output"] = dataclasses.asdict(self.output)
        return doc

    # -- files --------------------------------------------------------------------------------------------
    def resolve_files(self, base: Path | None, images_from_cli: bool = False, roles_from_cli=()):
        """Fill ``image_files`` and each checkpoint's ``file``: paths from a settings file are looked up
        relative to its folder ``base`` first."""
        self.image_files = [resolve_path(p, None if images_from_cli else base) for p in self.images]
        for role, ref in self.checkpoints.items():
            if ref is not None:
                ref.file = resolve_path(ref.path, None if role in roles_from_cli else base)
        return self

    def corruption_seed(self, corruption: Corruption) -> int:
        return self.seed if corruption.seed is None else corruption.seed

    def attack_seed(self, attack: Attack) -> int:
        return self.seed if attack.seed is None else attack.seed


_KNOWN_KEYS = (
    {f.name for f in dataclasses.fields(FigureSettings)} - {"image_files"}
    | {"schema", "image", "corruption", "attack", "data"}
    | set(SIDECAR_ONLY)
)


def _get(doc: dict, key: str, default, kind=None):
    """doc[key] (converted by ``kind``) when present and not null, else ``default``."""
    value = doc.get(key)
    if value is None:
        return default
    if kind is None:
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"settings {key!r} must be a number, got {value!r}.") from None


def _checkpoints_from_json(value) -> dict:
    value = value or {}
    if not isinstance(value, dict):
        raise UsageError("settings 'checkpoints' must be an object {mgnet: {path, sha256}, baseline: {...}}.")
    out = {}
    for role in ROLES:
        entry = value.get(role, "default")
        if entry == "default":
            out[role] = CheckpointRef(DEFAULT_CHECKPOINTS[role])
        else:
            out[role] = None if entry is None else CheckpointRef.from_json(entry, role)
    return out


def resolve_path(path: str, base: Path | None = None) -> Path:
    """A path from the command line or a settings file: as given, else relative to the settings file's
    folder, the current folder, then the repository (for the default checkpoints)."""
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    for root in ([base] if base else []) + [Path.cwd(), REPO]:
        if (root / p).exists():
            return root / p
    return p


def read_json(path) -> dict:
    """A settings file's JSON object; refuses a missing file, bad JSON or another schema."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"settings file {p} does not exist.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"settings file {p} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise UsageError(f"settings file {p} must hold a JSON object.")
    schema = doc.get("schema")
    if schema is not None and not str(schema).startswith(SCHEMA):
        raise UsageError(f"settings file {p} has schema {schema!r}; this tool reads {SCHEMA!r}.")
    return doc


# -- the command line over a settings file ---------------------------------------------------------------
def command_line_values(args: argparse.Namespace, command: str) -> dict:
    """The settings keys the command line sets, in the JSON shape (options not given are left out)."""
    doc = {}
    for key in ("limit", "models", "methods", "target", "n_glimpses", "seed", "topk", "batch_size"):
        if getattr(args, key, None) is not None:
            doc[key] = getattr(args, key)
    if args.true_grad:
        doc["s_grad"] = 1.0
    images = ([args.data] if args.data else None) if command == "metrics" else args.images
    if images:
        doc["images"] = images
        if command == "metrics":
            doc["data"] = args.data  # a settings file's own "data" must not win over --data
    if command == "figures":
        doc.update(_figure_values(args))
    else:
        doc.update(
            {
                k: getattr(args, k)
                for k in ("steps", "fill", "infidelity", "sensitivity")
                if getattr(args, k) is not None
            }
        )
    return doc


def _figure_values(args: argparse.Namespace) -> dict:
    doc = {}
    if args.figures is not None:
        doc["figures"] = args.figures
    if args.corruption is not None:
        doc["corruptions"] = [] if args.corruption == ["none"] else args.corruption
    if args.attack is not None:
        try:
            budgets = [float(e) for e in ([] if args.attack == ["none"] else args.attack)]
        except ValueError:
            raise UsageError(f"--attack takes eps values (in 1/255) or 'none', got {args.attack}.") from None
        doc["attacks"] = [
            {
                "method": args.attack_method,
                "eps": eps,
                "steps": args.attack_steps,
                "norm": args.attack_norm,
                "source": args.attack_source,
                "true_grad": args.attack_true_grad,
                "queries": getattr(args, "attack_queries", None),
            }
            for eps in budgets
        ]
    return doc


def _output_values(args: argparse.Namespace) -> dict:
    names = {"formats": "format", "dpi": "dpi", "width": "width", "font_size": "font_size", "grid_rows": "grid_rows"}
    doc = {key: getattr(args, name, None) for key, name in names.items() if getattr(args, name, None) is not None}
    if getattr(args, "titles", False):
        doc["titles"] = True
    return doc


def build_settings(args: argparse.Namespace, command: str) -> FigureSettings:
    """Defaults < settings file < command line; validated, with every file path resolved."""
    doc, base = ({}, None)
    if getattr(args, "settings", None):
        doc, base = read_json(args.settings), Path(args.settings).resolve().parent
    cli = command_line_values(args, command)
    merged = {k: v for k, v in doc.items() if k != "command"}
    merged.update(cli)
    merged["checkpoints"] = (
        dict(doc.get("checkpoints") or {}) if isinstance(doc.get("checkpoints") or {}, dict) else doc["checkpoints"]
    )
    roles_from_cli = [r for r in ROLES if getattr(args, r, None) is not None]
    for role in roles_from_cli:
        path = getattr(args, role)
        merged["checkpoints"][role] = None if path.lower() in ("none", "") else {"path": path}
    merged["output"] = dict(doc.get("output") or {}) if isinstance(doc.get("output") or {}, dict) else doc["output"]
    if isinstance(merged["output"], dict):
        merged["output"].update(_output_values(args))
    settings = FigureSettings.from_json(merged, command)
    return settings.resolve_files(base, images_from_cli="images" in cli, roles_from_cli=roles_from_cli)
