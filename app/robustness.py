"""Corrupt and attack the photo live; compare MGNet with the baselines on it.

Each sub-tab runs form() -> request, compute(request) -> result, show(result). The requests are kept in
session state (``cor_request``, ``atk_request``, ``sweep_request``): the sweep takes the Attack tab's
last attack and the Corruption tab's corruption from there, never from their widgets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st
import torch

from mgnet import attacks, corruptions, geometry, plots
from mgnet.data import image_hash, to_uint8

from . import services, ui

EPS_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 12.0, 16.0)  # the cliff lies between 4 and 8
SEVERITIES = (0, 1, 2, 3, 4, 5)
# The app's attacks, from the registry (the worst-case ensemble belongs to python -m mgnet.evaluate).
ATTACKS = {m: attacks.METHODS[m].label for m in ("apgd-ce", "pgd", "apgd-dlr", "square", "fgsm", "paper-pgd")}
# APGD-CE at eps 4 changes MGNet's prediction on the photo the app opens with (parachute_1.jpg: parachute
# 92% -> chain saw); PGD-10 needs eps 8 there.
DEFAULT_ATTACK, DEFAULT_EPS = "apgd-ce", 4.0
SQUARE_QUERIES = 1000  # the app's default budget (the registry's, for evaluations, is 5,000)
APGD_ITERATIONS = 100  # the paper's
COMPARED = ("pgd", "apgd-ce")  # the gradient attacks a gradient-free one is compared with
QP = dict(bind="query-params", persist_state="session")


@dataclass
class CorruptionRequest:
    name: str = "gaussian_noise"
    severity: int = 3
    seed: int = 0
    models: list = field(default_factory=list)  # names of the models compared


@dataclass
class AttackRequest:
    """One attack as the Attack tab sets it; ``source`` is the name of the crafting model."""

    method: str = DEFAULT_ATTACK
    eps: float = DEFAULT_EPS
    steps: int = 100  # PGD/paper PGD steps or APGD iterations
    step_size: float = 0.0  # 0: automatic
    norm: str = "linf"
    random_start: bool = True
    targeted: bool = False
    true_grad: bool = False
    seed: int = 0
    target: str | None = None  # class name, targeted attacks only
    source: str = ""
    models: list = field(default_factory=list)
    photo: str = ""
    model: str = ""
    queries: int = SQUARE_QUERIES
    compare: bool = True  # a gradient-free attack is also compared with the gradient attacks

    def __post_init__(self):
        # What each method takes comes from the registry: an option it ignores is reset, never sent.
        info = attacks.METHODS[attacks.canonical(self.method)]
        self.method = info.name
        takes = info.defaults
        self.norm = self.norm if "norm" in takes else "linf"
        self.random_start = bool(self.random_start) and "random_start" in takes
        self.targeted = bool(self.targeted) and info.targeted
        self.true_grad = bool(self.true_grad) and info.needs_gradients
        self.compare = bool(self.compare) and not info.needs_gradients
        if "steps" not in takes:
            self.steps = 1
        if not self.targeted:
            self.target = None

    def options(self) -> dict:
        """The method's own options for ``attacks.attack``."""
        return attacks.method_options(
            self.method,
            steps=self.steps,
            step_size=self.step_size or None,
            norm=self.norm,
            random_start=self.random_start,
            queries=self.queries,
        )

    def run_config(self, n_glimpses) -> dict:
        """What ``run_attack`` needs (and caches by)."""
        keys = ("method", "eps", "targeted", "true_grad", "seed")
        return dict({k: getattr(self, k) for k in keys}, n_glimpses=n_glimpses, **self.options())

    def work(self) -> tuple[int, str, int]:
        """(count, unit, analyses per unit) of the work ahead, an upper bound since attacks stop once they
        fool: a gradient step is a forward and a backward pass (about three analyses), a Square query one."""
        if self.method == "square":
            return self.queries, "query", 1
        return self.steps, "step", 3

    def crafting_model(self, models, entry):
        """The entry of the model the attack is crafted on (the analysed one unless it is a transfer)."""
        return next((m for m in models if m.name == self.source), entry)

    def white_box_sweep(self, eps: float) -> "AttackRequest":
        """The same attack, untargeted, at budget ``eps`` with an automatic step: one point of the sweep."""
        return dataclasses.replace(self, eps=float(eps), step_size=0.0, targeted=False, target=None)

    def gradient_twin(self, method: str) -> "AttackRequest":
        """A gradient attack at the same budget and seed, with the registry's settings: for comparison."""
        steps = attacks.METHODS[method].defaults["steps"]
        return dataclasses.replace(self, method=method, steps=steps, step_size=0.0, random_start=True, compare=False)


@dataclass
class SweepRequest:
    kind: str  # "eps" or "severity"
    max_eps: float
    models: list
    attack: AttackRequest
    corruption: CorruptionRequest
    photo: str = ""
    model: str = ""


def working_image(photo) -> tuple[np.ndarray, str]:
    """The photo at ImageNet-C scale (``corruptions.working_image``) and its content hash, cached."""

    def make():
        image = corruptions.working_image(photo.image)
        return image, image_hash(image)

    return services.memo("work-image", (photo.key,), make)


def models_for(entry, cat) -> list:
    """MGNet first, then the compatible models the user chose in this tab."""
    others = [b for b in cat.models if b is not entry and services.compatible(entry, b)]
    chosen = st.multiselect(
        "Compare with",
        [b.name for b in others],
        key="rob_models",
        **QP,
        default=[b.name for b in others if b.is_baseline][:1],
        help="Baselines (or other MGNets) with the same classes and input size.",
    )
    return [entry] + [b for b in others if b.name in chosen]


def _pred(a, t=-1):
    i = a.predicted(t)
    return a.classes[i], float(a.probs[t, i]), i


def prediction_rows(models, clean: dict, changed: dict, roles: dict | None = None) -> list[dict]:
    rows = []
    for e in models:
        ca, xa = clean[e.name], changed[e.name]
        cname, cp, ci = _pred(ca)
        aname, ap, _ = _pred(xa)
        row = {"model": e.short}
        if roles:
            row["attack"] = roles.get(e.name, "")
        row.update(
            {
                "clean prediction": f"{cname} ({cp:.0%})",
                "perturbed prediction": f"{aname} ({ap:.0%})",
                "confidence in clean class": float(xa.probs[-1, ci]),
                "changed": aname != cname,
                "_before": cp,
                "_after": float(xa.probs[-1, ci]),
                "_after_new": ap,
                "_before_label": cname,
                "_after_label": aname,
            }
        )
        rows.append(row)
    return rows


def show_rows(rows: list[dict], name: str):
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "confidence in clean class": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)
        },
    )
    bars = [
        {
            "model": r["model"],
            "before": r["_before"],
            "after": r["_after"],
            "after_new": r["_after_new"],
            "before_label": r["_before_label"],
            "after_label": r["_after_label"],
        }
        for r in rows
    ]
    fig = services.figure("predictions", (services.content_key(bars),), lambda: plots.prediction_compare_figure(bars))
    ui.figure(fig, name, key=f"fig-{ui.slug(name)}")


# -- corruption ------------------------------------------------------------------------------------------
def corrupted(work: np.ndarray, work_key: str, name: str, severity: int, seed: int) -> tuple[np.ndarray, str]:
    def make():
        image = corruptions.corrupt(work, name, severity, seed=seed)
        return image, image_hash(image)

    return services.memo("corrupt", (work_key, name, severity, seed), make)


@dataclass
class CorruptionResult:
    work: np.ndarray  # the clean photo at ImageNet-C scale
    work_key: str
    bad: np.ndarray  # the corrupted one
    bad_key: str
    clean: dict  # model name -> analysis of ``work``
    hit: dict  # model name -> analysis of ``bad``


def corruption_form(models) -> CorruptionRequest:
    c1, c2, c3 = st.columns([2, 2, 1])
    names = list(corruptions.CORRUPTIONS) + list(corruptions.EXTRA_CORRUPTIONS)
    name = c1.selectbox(
        "Corruption",
        names,
        index=0,
        key="cor_name",
        **QP,
        format_func=lambda k: f"{corruptions.label(k)} ({corruptions.GROUP_LABELS[corruptions.group_of(k)].lower()})",
    )
    severity = c2.slider("Severity", 1, 5, value=3, key="cor_sev", **QP)
    seed = c3.number_input("Seed", 0, 2**31 - 1, value=0, step=1, key="cor_seed", **QP)
    return CorruptionRequest(name, int(severity), int(seed), [m.name for m in models])


def corruption_compute(request: CorruptionRequest, photo, models, n) -> CorruptionResult:
    work, work_key = working_image(photo)
    bad, bad_key = corrupted(work, work_key, request.name, request.severity, request.seed)
    clean = {e.name: services.analyze_image(e, work, work_key, n) for e in models}
    hit = {e.name: services.analyze_image(e, bad, bad_key, n) for e in models}
    return CorruptionResult(work, work_key, bad, bad_key, clean, hit)


def corruption_show(request: CorruptionRequest, result: CorruptionResult, entry, models):
    a0, a1 = result.clean[entry.name], result.hit[entry.name]
    what = f"{corruptions.label(request.name)}, severity {request.severity}"
    for col, img, a, side in zip(st.columns(2, gap="medium"), (result.work, result.bad), (a0, a1), ("clean", "bad")):
        with col:
            pname, p, _ = _pred(a)
            title = f"{'clean' if side == 'clean' else what}: MGNet says {pname} ({p:.0%})"
            key = (result.work_key if side == "clean" else result.bad_key, services.content_key(a.boxes, title))
            fig = services.figure(
                "corruption-glimpses",
                key,
                lambda img=img, a=a, title=title: plots.glimpse_figure(
                    img, a.boxes, a.n_glimpses - 1, height=420, title=title
                ),
            )
            ui.figure(fig, f"corruption {'clean' if side == 'clean' else 'corrupted'}", key=f"fig-cor-{side}")
    ui.registry().images["corrupted-photo"] = result.bad
    show_rows(prediction_rows(models, result.clean, result.hit), "corruption predictions")


def render_corruption(photo, entry, models, settings):
    n = settings.get("n_glimpses")
    request = corruption_form(models)
    st.session_state["cor_request"] = request
    with st.spinner(f"applying {corruptions.label(request.name)} at severity {request.severity}…"):
        result = corruption_compute(request, photo, models, n)
    corruption_show(request, result, entry, models)
    corruption_saliency(entry, models, result, n)
    ui.registry().settings["corruption"] = {
        "name": request.name,
        "severity": request.severity,
        "seed": request.seed,
        "working_side": corruptions.WORK_SIDE,
    }
    ui.explain(
        f"- ImageNet-C corruptions (Hendrycks & Dietterich, 2019): 15 benchmark types in 4 groups plus 4 extra, "
        f"each at severity 1 (mild) to 5 (severe). They are applied to the photo at ImageNet scale (shorter side "
        f"{corruptions.WORK_SIDE} px) because their strength is defined in pixels; the clean column uses the same "
        f"image.\n"
        "- Left: MGNet's glimpses on the clean image; right: on the corrupted one. The table gives every chosen "
        "model's prediction before and after, and how much confidence the clean prediction kept.\n"
        "- Same seed, same corruption: the noise is reproducible."
    )


def corruption_saliency(entry, models, result: CorruptionResult, n):
    """MGNet's focus map and each model's saliency map, clean vs corrupted (explaining the clean prediction)."""
    from mgnet import explain
    from mgnet.analysis import focus_map

    c1, c2 = st.columns([1, 3])
    if not c1.toggle("Saliency, clean vs corrupted", value=False, key="cor_saliency", **QP):
        return
    fast = [m for m in explain.available_methods(entry.model) if not explain.METHODS[m].slow]
    method = c2.selectbox(
        "Method", fast, index=0, key="cor_method", format_func=lambda m: explain.METHODS[m].label, **QP
    )
    label = explain.METHODS[method].label
    sides = {
        "clean": (result.work, result.work_key, result.clean[entry.name]),
        "corrupted": (result.bad, result.bad_key, result.hit[entry.name]),
    }
    maps = {side: {} for side in sides}
    for side, (img, key, a) in sides.items():
        if not entry.is_baseline:
            maps[side]["MGNet<br>focus map"] = focus_map(a.boxes, a.width, a.height)
        for e in models:
            target = result.clean[e.name].predicted()  # explain the clean prediction on both images
            maps[side][f"{e.short}<br>{label}"] = services.explain_image(e, img, key, method, target, n).map
    boxes = {side: a.boxes for side, (_, _, a) in sides.items()} if not entry.is_baseline else None
    fig = plots.attribution_grid(
        result.work, maps, row_images={"corrupted": result.bad}, row_boxes=boxes, cell_height=250
    )
    ui.figure(fig, "corruption saliency", key="fig-cor-saliency")
    st.caption(
        "Each column explains one model's prediction on the clean image, on both images, on the shared "
        "colour scale. White outlines: MGNet's glimpses on that image."
    )


# -- attack ----------------------------------------------------------------------------------------------
def run_attack(source, photo, cfg: dict, y: int, progress=None) -> tuple[np.ndarray, bool]:
    """(adversarial photo at the source's input size, float32 [S, S, 3] NOT rounded to 8 bits; whether it
    fooled the source) for one ``AttackRequest.run_config``. Cached. The attack holds the shared model's
    lock and leaves it as found."""
    key = (source.key, photo.key, tuple(sorted(cfg.items())), y)

    def compute():
        cfg_ = dict(cfg)
        method, eps = cfg_.pop("method"), cfg_.pop("eps")
        adv = attacks.attack(
            source.model,
            services.model_input(source, photo),
            y,
            method,
            eps,
            targeted=cfg_.pop("targeted"),
            true_gradients=cfg_.pop("true_grad"),
            n_glimpses=cfg_.pop("n_glimpses"),
            seed=cfg_.pop("seed"),
            progress=progress,
            **cfg_,
        )
        image = adv.images[0].permute(1, 2, 0).float().cpu().numpy()
        return np.ascontiguousarray(image), bool(adv.success[0])

    return services.memo("attack", key, compute)


def attack_form(photo, entry, models, a) -> tuple[AttackRequest, bool]:
    names = [m.name for m in models]
    # Outside the form, so the form can switch off what the chosen method ignores.
    method = st.selectbox(
        "Attack",
        list(ATTACKS),
        index=0,
        format_func=ATTACKS.get,
        key="atk_method",
        **QP,
        help=" ".join(f"{ATTACKS[m]}: {attacks.METHODS[m].summary}" for m in ATTACKS),
    )
    info = attacks.METHODS[method]
    takes = info.defaults
    with st.form("attack_form"):
        c1, c2, c3, c4 = st.columns(4)
        eps = c2.number_input(
            "eps (in 1/255)",
            0.0,
            64.0,
            value=DEFAULT_EPS,
            step=0.5,
            key="atk_eps",
            **QP,
            help="Largest change per pixel (L∞) or L2 norm of the change, in units of 1/255.",
        )
        if method == "square":
            steps = c1.number_input(
                "Query budget",
                10,
                20000,
                value=SQUARE_QUERIES,
                step=100,
                key="atk_queries",
                **QP,
                help="Forward passes Square may spend (the paper's default: 5,000; it stops once fooled).",
            )
        elif method.startswith("apgd"):
            steps = c1.number_input(
                "Iterations",
                1,
                1000,
                value=APGD_ITERATIONS,
                step=10,
                key="atk_iters",
                **QP,
                help="APGD iterations (paper: 100).",
            )
        else:
            steps = c1.number_input(
                "Steps",
                1,
                200,
                value=10,
                step=1,
                key="atk_steps",
                **QP,
                help="PGD iterations.",
                disabled="steps" not in takes,
            )
        step = c3.number_input(
            "Step size (0 = auto)",
            0.0,
            64.0,
            value=0.0,
            step=0.25,
            key="atk_step",
            **QP,
            help="Per-step change in 1/255. Auto: 2.5·eps/steps (paper PGD: 1). APGD sets its own.",
            disabled="step_size" not in takes,
        )
        seed = c4.number_input("Seed", 0, 2**31 - 1, value=0, step=1, key="atk_seed", **QP)
        c1, c2, c3, c4 = st.columns(4)
        source = c1.selectbox(
            "Craft on (attacked model)",
            names,
            index=0,
            key="atk_source",
            **QP,
            format_func=lambda n: next(m.short for m in models if m.name == n),
            help="The attack uses this model (its gradients, or for Square its predictions). Every other "
            "model is then tested on the same image: a transfer attack.",
        )
        norm = c2.selectbox(
            "Norm",
            ["linf", "l2"],
            index=0,
            key="atk_norm",
            **QP,
            format_func={"linf": "L∞", "l2": "L2"}.get,
            disabled="norm" not in takes,
            help=None if "norm" in takes else f"{info.label} is L∞ only.",
        )
        true_grad = c3.checkbox(
            "True gradients",
            value=False,
            key="atk_truegrad",
            **QP,
            disabled=not info.needs_gradients,
            help="MGNet damps gradients through its localisation path 50× (s_grad = 0.02). "
            "Tick to attack with that re-scaling switched off: a stronger, more honest "
            "white-box test (it rules out gradient masking).",
        )
        random_start = c4.checkbox(
            "Random start", value=True, key="atk_random", **QP, disabled="random_start" not in takes
        )
        c1, c2, c3 = st.columns([1, 1.6, 1.6])
        targeted = c1.checkbox("Targeted", value=False, key="atk_targeted", **QP, disabled=not info.targeted)
        target = c2.selectbox(
            "Target class (targeted only)", a.classes, index=0, key="atk_target", **QP, disabled=not info.targeted
        )
        compare = c3.checkbox(
            "Also run PGD, APGD-CE",
            value=True,
            key="atk_compare",
            **QP,
            disabled=info.needs_gradients,
            help="Also run the gradient attacks at the same eps, to see whether the gradient-free attack beat them.",
        )
        submitted = st.form_submit_button("Run attack", type="primary")
    request = AttackRequest(
        method=method,
        eps=float(eps),
        steps=int(steps) if method != "square" else 1,
        step_size=float(step),
        norm=norm,
        random_start=bool(random_start),
        targeted=bool(targeted),
        true_grad=bool(true_grad),
        seed=int(seed),
        target=target,
        source=source,
        models=names,
        photo=photo.key,
        model=entry.key,
        queries=int(steps) if method == "square" else SQUARE_QUERIES,
        compare=bool(compare),
    )
    return request, submitted


@dataclass
class AttackResult:
    source: object  # the crafting model's entry
    label: int  # the class pushed away from (untargeted) or towards (targeted)
    adversarial: np.ndarray  # float32 [S, S, 3], the source's input size, as the attack left it (unrounded)
    rounded: np.ndarray  # uint8: its 8-bit export
    clean_small: np.ndarray  # the clean photo at that size, uint8
    clean: dict  # model name -> analysis of the photo
    hit: dict  # model name -> analysis of the unrounded adversarial image
    hit_rounded: dict  # model name -> analysis of the 8-bit export
    fooled: bool  # whether the attack fooled the source
    gradient_fooled: dict = field(default_factory=dict)  # compared gradient attack -> fooled the source


def attack_compute(request: AttackRequest, photo, entry, models, n, progress=None) -> AttackResult:
    source = request.crafting_model(models, entry)
    if request.targeted:
        y = source.model.classes.index(request.target)
    else:
        y = services.analyze(source, photo, n).predicted()
    adversarial, fooled = run_attack(source, photo, request.run_config(n), y, progress)
    rounded = to_uint8(torch.from_numpy(adversarial).permute(2, 0, 1)[None])[0]
    clean = {e.name: services.analyze(e, photo, n) for e in models}
    key, key8 = image_hash(adversarial), image_hash(rounded)
    hit = {e.name: services.analyze_image(e, adversarial, key, n) for e in models}
    hit_rounded = {e.name: services.analyze_image(e, rounded, key8, n) for e in models}
    compared = {}
    if request.compare:
        for method in COMPARED:
            twin = request.gradient_twin(method)
            compared[method] = run_attack(source, photo, twin.run_config(n), y, progress)[1]
    small = services.model_pixels(source, photo.image, photo.key)
    return AttackResult(source, y, adversarial, rounded, small, clean, hit, hit_rounded, fooled, compared)


def rounding_note(result: AttackResult, models) -> tuple[str, bool]:
    """(what 8-bit rounding did to the adversarial image, whether it erased it entirely)."""
    clean = result.clean_small.astype(np.int16)
    peak8 = int(np.abs(result.rounded.astype(np.int16) - clean).max())
    peak = float(np.abs(result.adversarial - result.clean_small / 255.0).max() * 255)
    if peak8 == 0:
        return (
            f"Rounded to 8 bits, this perturbation (largest change {peak:.2f}/255) disappears: the 8-bit file is "
            "the clean photo. The predictions above are on the unrounded image."
        ), True
    changed = [e.short for e in models if result.hit[e.name].predicted() != result.hit_rounded[e.name].predicted()]
    what = f"changes the prediction of {', '.join(changed)}" if changed else "keeps every model's prediction"
    return f"8-bit export: largest change {peak8}/255 (unrounded {peak:.2f}/255); rounding {what}.", False


def gradient_free_note(result: AttackResult, method: str) -> tuple[str, str] | None:
    """(level, text) when a gradient-free attack was compared with the gradient attacks on this photo."""
    if not result.gradient_fooled:
        return None
    who, label = result.source.short, attacks.METHODS[method].short
    grads = " and ".join(attacks.METHODS[m].short for m in result.gradient_fooled)
    if result.fooled and not any(result.gradient_fooled.values()):
        return "warning", (
            f"**{label}, which sees only {who}'s predictions, fooled it where {grads} (which follow its "
            "gradients) did not.** When a gradient-free attack beats gradient attacks, the gradients mislead "
            "the attacker (gradient masking), so robustness measured with gradient attacks alone is "
            "overstated. On MGNet, try the gradient attacks with true gradients."
        )
    if not result.fooled and any(result.gradient_fooled.values()):
        beaten = " and ".join(attacks.METHODS[m].short for m, f in result.gradient_fooled.items() if f)
        return "info", (
            f"{beaten} fooled {who} where {label} did not: the gradients are informative here (no sign of "
            f"masking on this photo); {label} may need more queries."
        )
    verdict = "all fooled" if result.fooled else "none fooled"
    return "info", f"{label}, {grads}: {verdict} {who} on this photo at this eps."


def attack_show(result: AttackResult, request: AttackRequest, photo, entry, models):
    clean_small, source = result.clean_small, result.source
    amp_img, amp = plots.perturbation_image(clean_small / 255.0, result.adversarial)
    peak = float(np.abs(result.adversarial - clean_small / 255.0).max() * 255)
    c1, c2, c3 = st.columns(3)
    with c1:
        ui.image(
            plots.nearest_upscale(clean_small, 256),
            "attack clean input",
            caption=f"Clean, as the model sees it ({source.model.image_size}px)",
        )
    with c2:
        ui.image(
            plots.nearest_upscale(result.rounded, 256),
            "attack adversarial input",
            caption="Adversarial (shown and downloadable as 8-bit; analysed unrounded)",
        )
    with c3:
        ui.image(
            plots.nearest_upscale(amp_img, 256),
            "attack perturbation",
            caption=f"Perturbation ×{amp:.0f} (largest change {peak:.2f}/255; grey = no change)",
        )
    roles = {e.name: ("white-box" if e.name == source.name else f"transfer from {source.short}") for e in models}
    rows = prediction_rows(models, result.clean, result.hit, roles)
    if not any(r["changed"] for r in rows):
        st.warning(
            f"This attack changed no model's prediction on this photo (eps {request.eps:g}/255). It is not a "
            "result about robustness: try a larger eps, APGD, or true gradients."
        )
    show_rows(rows, "attack predictions")
    note, erased = rounding_note(result, models)
    (st.warning if erased else st.caption)(note)
    comparison = gradient_free_note(result, request.method)
    if comparison:
        getattr(st, comparison[0])(comparison[1])
    if not entry.is_baseline:
        a0, a1 = result.clean[entry.name], result.hit[entry.name]
        moved = geometry.to_original(a1.boxes_model, a1.image_size, photo.width, photo.height)
        fig = services.figure(
            "movement",
            (photo.key, services.content_key(a0.boxes, moved)),
            lambda: plots.movement_figure(
                services.picture(photo),
                a0.boxes,
                moved,
                labels=("clean", "adversarial"),
                title="How MGNet's glimpses moved (solid, n: clean; dashed, n′: adversarial)",
                height=460,
            ),
        )
        ui.figure(fig, "glimpse movement", key="fig-atk-move")
        shift = geometry.centre_shift(photo.in_file_pixels(a0.boxes), photo.in_file_pixels(moved), *photo.file_size)
        st.caption(
            "Centre moved: "
            + "; ".join(
                f"glimpse {t + 1} {px:.0f} px ({share:.0%} of the photo's side)"
                for t, (px, share) in enumerate(shift)
                if t
            )
        )
    ui.registry().images["adversarial-input"] = result.rounded


def render_attack(photo, entry, models, a, settings):
    n = settings.get("n_glimpses")
    request, submitted = attack_form(photo, entry, models, a)
    if submitted or (st.session_state.get("atk_request") is None and services.was_done("attack", request)):
        st.session_state["atk_request"] = request  # a page address naming a computed attack shows it at once
    request = st.session_state.get("atk_request")
    if not request:
        st.info(
            "Set the attack and press **Run attack**. APGD-CE (100 iterations) takes a few seconds on a CPU; "
            "Square spends its query budget unless it fools the model sooner."
        )
        return
    if request.photo != photo.key or request.model != entry.key:
        st.info("The photo or model changed. Press **Run attack** to attack this one.")
        return
    work, unit, per_unit = request.work()
    source = request.crafting_model(models, entry)
    about = ui.rough_time(per_unit * work * services.analyze(source, photo, n).seconds, at_most=True)
    bar = st.progress(0.0, text=f"attacking: up to {work} {unit}{'s' if work > 1 else ''}, {about}…")
    result = attack_compute(
        request,
        photo,
        entry,
        models,
        n,
        lambda d, t: bar.progress(min(d / t, 1.0), text=f"attack {unit} {d}/{t} ({about} in all)"),
    )
    bar.progress(1.0, text="attack done")
    services.mark_done("attack", request)
    attack_show(result, request, photo, entry, models)
    ui.registry().settings["attack"] = dict(
        request.run_config(n),
        source=result.source.name,
        source_sha256=result.source.sha256,
        label=int(result.label),
        fooled_source=result.fooled,
        gradient_attacks_fooled_source=result.gradient_fooled or None,
    )
    ui.explain(
        "- The attack changes the image as the model sees it (its input resolution) within a budget of eps/255 "
        "per pixel (L∞) or in L2 norm. Untargeted attacks push away from the crafting model's clean prediction; "
        "targeted ones (PGD, FGSM) pull towards the chosen class.\n"
        "- **APGD-CE / APGD-DLR** (Croce & Hein 2020, part of AutoAttack) choose their own step size and use "
        "momentum; **Square** needs no gradients at all, only the model's predictions, so a model that hides "
        "or damps its gradients cannot stop it. If Square succeeds where the gradient attacks fail, their "
        "robustness numbers are overstated.\n"
        "- **Craft on** picks the attacked model. Every other model is tested on the same image, which is a "
        "*transfer* attack for it.\n"
        "- **True gradients**: MGNet multiplies gradients through its glimpse-location path by 0.02. Robustness "
        "seen only with that damping may be gradient masking; attack with it off, with Square, and by transfer "
        "from the baseline before trusting a robustness number.\n"
        "- **Paper PGD** reproduces the authors' evaluation (perturbation in normalised units, no random start, "
        "no clamp, so norm and random start do not apply), which is about 4× weaker than pixel-space PGD at "
        "the same eps.\n"
        "- Predictions are on the adversarial image exactly as the attack left it (not rounded). The picture "
        "and the download are its 8-bit rounding; the note under the table says what rounding did (at eps 1-2 "
        "paper PGD's change is below 1/255 and rounding erases it). The perturbation is amplified to be "
        "visible; its true size is given."
    )


# -- sweep -----------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    xs: list
    series: dict  # model short name -> confidence in its clean prediction at each x
    correct: dict  # model short name -> still predicts that class at each x
    xlabel: str


def sweep_form(photo, entry, models) -> tuple[SweepRequest, bool]:
    c1, c2 = st.columns([2, 1])
    kind = c1.radio(
        "Sweep",
        ["eps", "severity"],
        index=0,
        key="sweep_kind",
        horizontal=True,
        **QP,
        format_func={"eps": "attack strength (eps)", "severity": "corruption severity"}.get,
    )
    max_eps = c2.select_slider(
        "Largest eps", [1.0, 2.0, 4.0, 8.0, 16.0], value=8.0, key="sweep_max_eps", **QP, disabled=kind != "eps"
    )
    submitted = st.button("Run sweep", key="sweep_run", type="primary")
    # the other sub-tabs' last requests (never their widgets); their defaults when they have not run yet
    attack = st.session_state.get("atk_request") or AttackRequest()
    corruption = st.session_state.get("cor_request") or CorruptionRequest()
    return SweepRequest(kind, max_eps, [m.name for m in models], attack, corruption, photo.key, entry.key), submitted


def sweep_eps(request: SweepRequest, photo, models, n, progress) -> SweepResult:
    xs = [e for e in EPS_GRID if e <= request.max_eps]
    series, correct = {}, {}
    total = len(xs) * len(models)
    for j, m in enumerate(models):
        clean = services.analyze(m, photo, n)
        y = clean.predicted()
        ys, ok = [], []
        for i, eps in enumerate(xs):
            done = j * len(xs) + i
            progress(done / total, f"{m.short}: eps {eps:g} ({done + 1}/{total})")
            if eps == 0:
                res = clean
            else:
                cfg = request.attack.white_box_sweep(eps).run_config(n)
                adv = run_attack(
                    m,
                    photo,
                    cfg,
                    y,
                    lambda d, t, done=done, eps=eps, m=m: progress(
                        (done + min(d / t, 1.0)) / total, f"{m.short}: eps {eps:g}, step {d}/{t}"
                    ),
                )[0]
                res = services.analyze_image(m, adv, image_hash(adv), n)
            ys.append(float(res.probs[-1, y]))
            ok.append(res.predicted() == y)
        series[m.short], correct[m.short] = ys, ok
    xlabel = f"eps (1/255, {attacks.METHODS[request.attack.method].short}, each model attacked white-box)"
    return SweepResult(xs, series, correct, xlabel)


def sweep_severity(request: SweepRequest, photo, models, n, progress) -> SweepResult:
    name, seed = request.corruption.name, request.corruption.seed
    work, work_key = working_image(photo)
    xs = list(SEVERITIES)
    images = []
    for i, severity in enumerate(xs):
        progress(i / len(xs), f"{corruptions.label(name)} severity {severity}")
        images.append((work, work_key) if severity == 0 else corrupted(work, work_key, name, severity, seed))
    series, correct = {}, {}
    for m in models:
        y = services.analyze_image(m, work, work_key, n).predicted()
        results = [services.analyze_image(m, img, key, n) for img, key in images]
        series[m.short] = [float(r.probs[-1, y]) for r in results]
        correct[m.short] = [r.predicted() == y for r in results]
    return SweepResult(xs, series, correct, f"severity of {corruptions.label(name)}")


def sweep_estimate(request: SweepRequest, photo, models, n) -> str:
    """Rough time of a sweep before it starts: each model attacked at every eps of the grid (a step is
    about three analyses), or analysed on every severity."""
    per = sum(services.analyze(m, photo, n).seconds for m in models)
    if request.kind == "eps":
        work, unit, per_unit = request.attack.work()
        runs = sum(1 for e in EPS_GRID if 0 < e <= request.max_eps)
        unit = "queries" if unit == "query" else f"{unit}s"
        return (
            f"{runs * len(models)} attacks of up to {work} {unit}: {ui.rough_time(per_unit * runs * work * per, True)}"
        )
    return f"{len(SEVERITIES)} severities: {ui.rough_time(len(SEVERITIES) * per)} plus corrupting"


def render_sweep(photo, entry, models, a, settings):
    n = settings.get("n_glimpses")
    request, submitted = sweep_form(photo, entry, models)
    if submitted or (st.session_state.get("sweep_request") is None and services.was_done("sweep", request)):
        st.session_state["sweep_request"] = request
    request = st.session_state.get("sweep_request")
    if not request or request.photo != photo.key or request.model != entry.key:
        st.info(
            "Press **Run sweep**: every chosen model on this photo, as the attack (each model attacked "
            "white-box with the Attack tab's last settings) or the corruption (the Corruption tab's type) "
            "grows."
        )
        return
    chosen = [m for m in models if m.name in request.models] or [entry]
    bar = st.progress(0.0, text=f"sweeping {request.kind} ({sweep_estimate(request, photo, chosen, n)})…")
    compute = sweep_eps if request.kind == "eps" else sweep_severity
    result = compute(request, photo, chosen, n, lambda fraction, text: bar.progress(fraction, text=text))
    bar.progress(1.0, text="sweep done")
    services.mark_done("sweep", request)
    fig = plots.sweep_figure(
        result.xs,
        result.series,
        result.xlabel,
        correct=result.correct,
        title="Confidence in the clean prediction on this photo",
    )
    ui.figure(fig, "sweep", key="fig-sweep")
    ui.registry().settings["sweep"] = {"kind": request.kind, "x": list(result.xs), "series": result.series}
    ui.explain(
        "- Each line follows one model's confidence in the class it predicted on the clean photo. "
        "Filled markers: it still predicts that class; open markers: it changed its mind.\n"
        "- One photo is an anecdote, not a benchmark: use `python -m mgnet.evaluate` for accuracy over a "
        "data set."
    )


def render(photo, entry, a, cat, settings):
    models = models_for(entry, cat)
    t1, t2, t3 = st.tabs(["Corruption", "Attack", "Sweep"], key="rob_view", on_change="rerun", bind="query-params")
    with t1:
        if t1.open:
            with ui.panel("Corruption"):
                render_corruption(photo, entry, models, settings)
    with t2:
        if t2.open:
            with ui.panel("Attack"):
                render_attack(photo, entry, models, a, settings)
    with t3:
        if t3.open:
            with ui.panel("Sweep"):
                render_sweep(photo, entry, models, a, settings)
