"""Corrupt and attack the photo live; compare MGNet with the baselines on it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch

from mgnet import attacks as ma
from mgnet import corruptions as mc
from mgnet import geometry, plots
from mgnet.data import image_hash, resize_rgb

from . import services, ui

WORK_SIDE = 224        # corruptions are defined on ImageNet-sized images: shorter side 224 px
EPS_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
ATTACKS = {"pgd": "PGD (pixel space, clamped)", "fgsm": "FGSM (one step)",
           "paper_pgd": "Paper PGD (normalised space, no clamp)"}


QP = dict(bind="query-params", persist_state="session")


def working_image(photo) -> tuple[np.ndarray, str]:
    """The photo at ImageNet-C scale (shorter side 224 px, aspect kept) and its content hash."""
    def make():
        img = photo.image
        h, w = img.shape[:2]
        f = WORK_SIDE / min(h, w)
        if f < 1:
            img = plots.downscale(img, max(1, round(max(h, w) * f)))
        return img, image_hash(img)
    return services.memo("work-image", (photo.key,), make)


def models_for(entry, cat) -> list:
    """MGNet first, then the compatible models the user chose in this tab."""
    others = [b for b in cat.models if b is not entry and services.compatible(entry, b)]
    chosen = st.multiselect("Compare with", [b.name for b in others], key="rob_models", **QP,
                            default=[b.name for b in others if b.is_baseline][:1],
                            help="Baselines (or other MGNets) with the same classes and input size.")
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
        row.update({"clean prediction": f"{cname} ({cp:.0%})", "perturbed prediction": f"{aname} ({ap:.0%})",
                    "confidence in clean class": float(xa.probs[-1, ci]), "changed": aname != cname,
                    "_before": cp, "_after": float(xa.probs[-1, ci]), "_before_label": cname, "_after_label": aname})
        rows.append(row)
    return rows


def show_rows(rows: list[dict], name: str):
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"confidence in clean class": st.column_config.ProgressColumn(
                     format="percent", min_value=0.0, max_value=1.0)})
    fig = plots.prediction_compare_figure([{"model": r["model"], "before": r["_before"], "after": r["_after"],
                                            "before_label": r["_before_label"], "after_label": r["_after_label"]}
                                           for r in rows])
    ui.figure(fig, name, key=f"fig-{ui.slug(name)}")


# -- corruption ------------------------------------------------------------------------------------------
def corrupted(work: np.ndarray, work_key: str, name: str, severity: int, seed: int) -> tuple[np.ndarray, str]:
    def make():
        img = mc.corrupt(work, name, severity, seed=seed)
        return img, image_hash(img)
    return services.memo("corrupt", (work_key, name, severity, seed), make)


def render_corruption(photo, entry, models, settings):
    n = settings.get("n_glimpses")
    c1, c2, c3 = st.columns([2, 2, 1])
    names = list(mc.CORRUPTIONS) + list(mc.EXTRA_CORRUPTIONS)
    name = c1.selectbox("Corruption", names, index=0, key="cor_name", **QP,
                        format_func=lambda k: f"{mc.label(k)} ({mc.GROUP_LABELS[mc.group_of(k)].lower()})")
    severity = c2.slider("Severity", 1, 5, value=3, key="cor_sev", **QP)
    seed = c3.number_input("Seed", 0, 2**31 - 1, value=0, step=1, key="cor_seed", **QP)
    work, work_key = working_image(photo)
    with st.spinner(f"applying {mc.label(name)} at severity {severity}…"):
        bad, bad_key = corrupted(work, work_key, name, int(severity), int(seed))
    clean = {e.name: services.analyze_image(e, work, work_key, n) for e in models}
    hit = {e.name: services.analyze_image(e, bad, bad_key, n) for e in models}
    a0, a1 = clean[entry.name], hit[entry.name]
    c1, c2 = st.columns(2, gap="medium")
    for col, img, a, what in ((c1, work, a0, "clean"), (c2, bad, a1, f"{mc.label(name)}, severity {severity}")):
        with col:
            pname, p, _ = _pred(a)
            fig = plots.glimpse_figure(img, a.boxes, a.n_glimpses - 1, title=f"{what}: MGNet says {pname} ({p:.0%})",
                                       height=420)
            ui.figure(fig, f"corruption {'clean' if img is work else 'corrupted'}",
                      key=f"fig-cor-{'clean' if img is work else 'bad'}")
    ui.registry().images["corrupted-photo"] = bad
    show_rows(prediction_rows(models, clean, hit), "corruption predictions")
    corruption_saliency(entry, models, work, work_key, bad, bad_key, clean, n)
    ui.registry().settings["corruption"] = {"name": name, "severity": int(severity), "seed": int(seed),
                                            "working_side": WORK_SIDE}
    ui.explain(
        f"- ImageNet-C corruptions (Hendrycks & Dietterich, 2019): 15 benchmark types in 4 groups plus 4 extra, "
        f"each at severity 1 (mild) to 5 (severe). They are applied to the photo at ImageNet scale (shorter side "
        f"{WORK_SIDE} px) because their strength is defined in pixels; the clean column uses the same image.\n"
        "- Left: MGNet's glimpses on the clean image; right: on the corrupted one. The table gives every chosen "
        "model's prediction before and after, and how much confidence the clean prediction kept.\n"
        "- Same seed, same corruption: the noise is reproducible.")


def corruption_saliency(entry, models, work, work_key, bad, bad_key, clean: dict, n):
    """MGNet's focus map and each model's saliency map, clean vs corrupted (explaining the clean prediction)."""
    from mgnet import explain as mx
    from mgnet.analysis import focus_map

    c1, c2 = st.columns([1, 3])
    show = c1.toggle("Saliency, clean vs corrupted", value=False, key="cor_saliency", **QP)
    if not show:
        return
    fast = [m for m in mx.available_methods(entry.model) if not mx.METHODS[m].slow]
    method = c2.selectbox("Method", fast, index=0, key="cor_method", format_func=lambda m: mx.METHODS[m].label, **QP)
    label = mx.METHODS[method].label
    a_bad = services.analyze_image(entry, bad, bad_key, n)
    sides = {"clean": (work, work_key, clean[entry.name]), "corrupted": (bad, bad_key, a_bad)}
    maps = {side: {} for side in sides}
    for side, (img, key, a) in sides.items():
        if not entry.is_baseline:
            maps[side]["MGNet<br>focus map"] = focus_map(a.boxes, a.width, a.height)
        for e in models:
            target = clean[e.name].predicted()  # explain the clean prediction on both images
            maps[side][f"{e.short}<br>{label}"] = services.explain_image(e, img, key, method, target, n).map
    boxes = {side: a.boxes for side, (_, _, a) in sides.items()} if not entry.is_baseline else None
    fig = plots.attribution_grid(work, maps, row_images={"corrupted": bad}, row_boxes=boxes, cell_height=250)
    ui.figure(fig, "corruption saliency", key="fig-cor-saliency")
    st.caption("Each column explains one model's prediction on the clean image, on both images, on the shared "
               "colour scale. White outlines: MGNet's glimpses on that image.")


# -- attack ----------------------------------------------------------------------------------------------
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, S, S] pixels -> [S, S, 3] uint8 (clamped and rounded: the image a file would hold)."""
    return (x[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def run_attack(source, photo, cfg: dict, y: int, progress=None) -> np.ndarray:
    """Adversarial version (uint8, model resolution) of the photo crafted on ``source``. Cached."""
    key = (source.key, photo.key, tuple(sorted(cfg.items())), y)

    def compute():
        x = services.model_input(source, photo)
        s_grad = 1.0 if (cfg["true_grad"] and not source.is_baseline) else None
        n = None if source.is_baseline else cfg["n_glimpses"]
        if cfg["method"] == "paper_pgd":  # the attacks hold the shared model's lock themselves
            x_adv = ma.paper_pgd(source.model, x, y, eps=cfg["eps"], step=cfg["step_size"] or 1.0,
                                 steps=cfg["steps"], n_glimpses=n, s_grad=s_grad, progress=progress)
        else:
            x_adv = ma.attack(source.model, x, y, method=cfg["method"], eps=cfg["eps"], steps=cfg["steps"],
                              step_size=cfg["step_size"] or None, norm=cfg["norm"],
                              random_start=cfg["random_start"], targeted=cfg["targeted"], s_grad=s_grad,
                              n_glimpses=n, seed=cfg["seed"], progress=progress)
        return to_uint8(x_adv)
    return services.memo("attack", key, compute)


def attack_form(entry, models, a):
    names = [m.name for m in models]
    with st.form("attack_form"):
        c1, c2, c3, c4 = st.columns(4)
        method = c1.selectbox("Attack", list(ATTACKS), index=0, format_func=ATTACKS.get, key="atk_method", **QP)
        eps = c2.number_input("eps (in 1/255)", 0.0, 64.0, value=4.0, step=0.5, key="atk_eps", **QP,
                              help="Largest change per pixel (L∞) or L2 norm of the change, in units of 1/255.")
        steps = c3.number_input("Steps", 1, 200, value=10, step=1, key="atk_steps", **QP, help="PGD iterations (FGSM: 1).")
        step = c4.number_input("Step size (0 = auto)", 0.0, 64.0, value=0.0, step=0.25, key="atk_step", **QP,
                               help="Per-step change in 1/255. Auto: 2.5·eps/steps (paper PGD: 1).")
        c1, c2, c3, c4 = st.columns(4)
        source = c1.selectbox("Craft on (attacked model)", names, index=0, key="atk_source", **QP,
                              format_func=lambda n: next(m.short for m in models if m.name == n),
                              help="The attack sees this model's gradients. Every other model is then tested on "
                                   "the same image: a transfer attack.")
        norm = c2.selectbox("Norm", ["linf", "l2"], index=0, key="atk_norm", **QP, format_func={"linf": "L∞", "l2": "L2"}.get)
        true_grad = c3.checkbox("True gradients", value=False, key="atk_truegrad", **QP,
                                help="MGNet damps gradients through its localisation path 50× (s_grad = 0.02). "
                                     "Tick to attack with that re-scaling switched off: a stronger, more honest "
                                     "white-box test (it rules out gradient masking).")
        random_start = c4.checkbox("Random start", value=True, key="atk_random", **QP)
        c1, c2, c3 = st.columns([1, 2, 1])
        targeted = c1.checkbox("Targeted", value=False, key="atk_targeted", **QP)
        target = c2.selectbox("Target class (targeted only)", a.classes, index=0, key="atk_target", **QP)
        seed = c3.number_input("Seed", 0, 2**31 - 1, value=0, step=1, key="atk_seed", **QP)
        submitted = st.form_submit_button("Run attack", type="primary")
    cfg = {"method": method, "eps": float(eps), "steps": int(steps) if method != "fgsm" else 1,
           "step_size": float(step), "norm": norm, "random_start": bool(random_start) and method == "pgd",
           "targeted": bool(targeted) and method != "paper_pgd", "true_grad": bool(true_grad), "seed": int(seed),
           "target": target if targeted else None, "source": source}
    return cfg, submitted


def render_attack(photo, entry, models, a, settings):
    n = settings.get("n_glimpses")
    cfg, submitted = attack_form(entry, models, a)
    if submitted:
        st.session_state["atk_request"] = dict(cfg, photo=photo.key, model=entry.key)
    req = st.session_state.get("atk_request")
    if not req:
        st.info("Set the attack and press **Run attack**. PGD-10 takes a few seconds on a CPU.")
        return
    if req["photo"] != photo.key or req["model"] != entry.key:
        st.info("The photo or model changed. Press **Run attack** to attack this one.")
        return
    source = next((m for m in models if m.name == req["source"]), entry)
    clean_src = services.analyze(source, photo, n)
    y = source.model.classes.index(req["target"]) if req["targeted"] else clean_src.predicted()
    run_cfg = {k: req[k] for k in ("method", "eps", "steps", "step_size", "norm", "random_start", "targeted",
                                   "true_grad", "seed")}
    run_cfg["n_glimpses"] = n
    bar = st.progress(0.0, text="attacking…")
    adv = run_attack(source, photo, run_cfg, y, lambda d, t: bar.progress(d / t, text=f"attack step {d}/{t}"))
    bar.progress(1.0, text="attack done")
    adv_key = image_hash(adv)
    size = source.model.image_size
    clean_small = resize_rgb(photo.image, size)
    amp_img, amp = plots.perturbation_image(clean_small, adv)
    peak = float(np.abs(adv.astype(np.int16) - clean_small.astype(np.int16)).max())
    c1, c2, c3 = st.columns(3)
    with c1:
        ui.image(plots.nearest_upscale(clean_small, 256), "attack clean input", caption=f"Clean, as the model sees it ({size}px)")
    with c2:
        ui.image(plots.nearest_upscale(adv, 256), "attack adversarial input", caption="Adversarial (8-bit)")
    with c3:
        ui.image(plots.nearest_upscale(amp_img, 256), "attack perturbation",
                 caption=f"Perturbation ×{amp:.0f} (largest change {peak:.0f}/255; grey = no change)")
    clean = {e.name: services.analyze(e, photo, n) for e in models}
    hit = {e.name: services.analyze_image(e, adv, adv_key, n) for e in models}
    roles = {e.name: ("white-box" if e.name == source.name else f"transfer from {source.short}") for e in models}
    show_rows(prediction_rows(models, clean, hit, roles), "attack predictions")
    if not entry.is_baseline:
        a0, a1 = clean[entry.name], hit[entry.name]
        moved = geometry.to_original(a1.boxes_model, a1.image_size, photo.width, photo.height)
        fig = plots.movement_figure(services.picture(photo), a0.boxes, moved, labels=("clean", "adversarial"),
                                    title="How MGNet's glimpses moved (solid: clean, dashed: adversarial)", height=460)
        ui.figure(fig, "glimpse movement", key="fig-atk-move")
    ui.registry().images["adversarial-input"] = adv
    ui.registry().settings["attack"] = dict(run_cfg, source=source.name, source_sha256=source.sha256, label=int(y))
    ui.explain(
        "- The attack changes the image as the model sees it (its input resolution) within a budget of eps/255 "
        "per pixel (L∞) or in L2 norm. Untargeted attacks push away from the crafting model's clean prediction; "
        "targeted ones pull towards the chosen class.\n"
        "- **Craft on** picks whose gradients are used (white-box). Every other model is tested on the same "
        "image, which is a *transfer* attack for it.\n"
        "- **True gradients**: MGNet multiplies gradients through its glimpse-location path by 0.02. Robustness "
        "seen only with that damping may be gradient masking; attack with it off, and by transfer from the "
        "baseline, before trusting a robustness number.\n"
        "- **Paper PGD** reproduces the authors' evaluation (perturbation in normalised units, no random start, "
        "no clamp), which is about 4× weaker than pixel-space PGD at the same eps.\n"
        "- Predictions are on the 8-bit adversarial image (what you can download), so rounding can weaken a "
        "very small perturbation slightly. The perturbation is amplified to be visible; its true size is given.")


# -- sweep -----------------------------------------------------------------------------------------------
def render_sweep(photo, entry, models, a, settings):
    n = settings.get("n_glimpses")
    c1, c2 = st.columns([2, 1])
    kind = c1.radio("Sweep", ["eps", "severity"], index=0, key="sweep_kind", horizontal=True, **QP,
                    format_func={"eps": "attack strength (eps)", "severity": "corruption severity"}.get)
    max_eps = c2.select_slider("Largest eps", [1.0, 2.0, 4.0, 8.0, 16.0], value=8.0, key="sweep_max_eps", **QP,
                               disabled=kind != "eps")
    go_ = st.button("Run sweep", key="sweep_run", type="primary")
    if go_:
        st.session_state["sweep_request"] = {"kind": kind, "max_eps": max_eps, "photo": photo.key, "model": entry.key,
                                             "models": [m.name for m in models]}
    req = st.session_state.get("sweep_request")
    if not req or req["photo"] != photo.key or req["model"] != entry.key:
        st.info("Press **Run sweep**: every chosen model on this photo, as the attack (each model attacked "
                "white-box with the Attack tab's settings) or the corruption (the Corruption tab's type) grows.")
        return
    ms = [m for m in models if m.name in req["models"]] or [entry]
    series, correct = {}, {}
    if req["kind"] == "eps":
        xs = [e for e in EPS_GRID if e <= req["max_eps"]]
        cfg_base = {k: st.session_state.get(f"atk_{k2}") for k, k2 in
                    (("method", "method"), ("steps", "steps"), ("step_size", "step"), ("norm", "norm"),
                     ("random_start", "random"), ("true_grad", "truegrad"), ("seed", "seed"))}
        cfg_base = {"method": cfg_base["method"] or "pgd", "steps": int(cfg_base["steps"] or 10),
                    "step_size": 0.0, "norm": cfg_base["norm"] or "linf",
                    "random_start": bool(cfg_base["random_start"]) if cfg_base["random_start"] is not None else True,
                    "targeted": False, "true_grad": bool(cfg_base["true_grad"]), "seed": int(cfg_base["seed"] or 0),
                    "n_glimpses": n}
        if cfg_base["method"] == "fgsm":
            cfg_base["steps"], cfg_base["random_start"] = 1, False
        bar = st.progress(0.0, text="sweeping eps…")
        total = len(xs) * len(ms)
        for j, m in enumerate(ms):
            clean = services.analyze(m, photo, n)
            y = clean.predicted()
            ys, ok = [], []
            for i, eps in enumerate(xs):
                done = j * len(xs) + i
                bar.progress(done / total, text=f"{m.short}: eps {eps:g} ({done + 1}/{total})")
                if eps == 0:
                    res = clean
                else:
                    cfg = dict(cfg_base, eps=float(eps))
                    adv = run_attack(m, photo, cfg, y,
                                     lambda d, t, done=done, m=m, eps=eps: bar.progress((done + d / t) / total,
                                                                          text=f"{m.short}: eps {eps:g}, step {d}/{t}"))
                    res = services.analyze_image(m, adv, image_hash(adv), n)
                ys.append(float(res.probs[-1, y]))
                ok.append(res.predicted() == y)
            series[m.short], correct[m.short] = ys, ok
        bar.progress(1.0, text="sweep done")
        xlabel = f"eps (1/255, {cfg_base['method'].upper()}, each model attacked white-box)"
    else:
        name = st.session_state.get("cor_name", "gaussian_noise")
        seed = int(st.session_state.get("cor_seed", 0))
        work, work_key = working_image(photo)
        xs = [0, 1, 2, 3, 4, 5]
        bar = st.progress(0.0, text="sweeping severity…")
        imgs = []
        for i, sev in enumerate(xs):
            bar.progress(i / len(xs), text=f"{mc.label(name)} severity {sev}")
            imgs.append((work, work_key) if sev == 0 else corrupted(work, work_key, name, sev, seed))
        for m in ms:
            clean = services.analyze_image(m, work, work_key, n)
            y = clean.predicted()
            res = [services.analyze_image(m, img, key, n) for img, key in imgs]
            series[m.short] = [float(r.probs[-1, y]) for r in res]
            correct[m.short] = [r.predicted() == y for r in res]
        bar.progress(1.0, text="sweep done")
        xlabel = f"severity of {mc.label(name)}"
    fig = plots.sweep_figure(xs, series, xlabel, correct=correct,
                             title="Confidence in the clean prediction on this photo")
    ui.figure(fig, "sweep", key="fig-sweep")
    ui.registry().settings["sweep"] = {"kind": req["kind"], "x": list(xs), "series": series}
    ui.explain("- Each line follows one model's confidence in the class it predicted on the clean photo. "
               "Filled markers: it still predicts that class; open markers: it changed its mind.\n"
               "- One photo is an anecdote, not a benchmark: use `python -m mgnet.evaluate` for accuracy over a "
               "data set.")


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
