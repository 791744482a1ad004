"""MGNet Explorer: watch a Multi-Glimpse Network look at a photo.

Run from the repository root:  streamlit run app/main.py
Checkpoints are listed from $MGNET_CHECKPOINTS (default: checkpoints/); MGNET_DEVICE=cpu|cuda forces a device.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The library comes from the installed package (`pip install -e .[app]`, as the README's command does). The
# app's own modules are the package `app` beside this file, and a checkout that was never installed has mgnet
# there too, so the repository root is added (at the end: an installed mgnet wins) only when one is missing.
if importlib.util.find_spec("mgnet") is None or importlib.util.find_spec("app") is None:
    sys.path.append(str(ROOT))

import streamlit as st  # noqa: E402

from app import compare, glimpses, robustness, services, ui  # noqa: E402
from app.export import build_bundle, figure_settings  # noqa: E402
from mgnet.figures.settings import Attack, CheckpointRef  # noqa: E402
from mgnet import plots  # noqa: E402

VIEWS = ["Glimpses", "Compare", "Robustness"]
SOURCES = ["Example", "Upload", "Camera"]
DEFAULT_EXAMPLE = "parachute_1"  # opens analysed; any stem of app/examples/
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]
QP = dict(bind="query-params", persist_state="session")


def sidebar_photo():
    """The photo to analyse, and an error message when the chosen input could not be used."""
    sb = st.sidebar
    sb.header("Photo")
    source = sb.radio("Photo from", SOURCES, key="source", horizontal=True, **QP)
    examples = services.examples()
    names = [p.stem for p in examples]
    error = None
    data = name = None
    if source == "Upload":
        up = sb.file_uploader(
            "Upload a photo",
            type=UPLOAD_TYPES,
            key="upload",
            help="JPEG, PNG, WebP, BMP, TIFF or GIF (first frame). Any size: it is downscaled for "
            f"the model. A large JPEG is decoded at 1/2 to 1/8 scale, keeping at least "
            f"{services.PHOTO_MIN_SIDE} px on its shorter side: faster, and the same on screen.",
        )
        if up is not None:
            data, name = up.getvalue(), up.name
        else:
            sb.caption("No file yet: showing the selected example.")
    elif source == "Camera":
        shot = sb.camera_input("Take a photo", key="camera")
        if shot is not None:
            data, name = shot.getvalue(), "camera.jpg"
        else:
            sb.caption("No photo yet: showing the selected example.")
    chosen = (
        sb.selectbox(
            "Example",
            names,
            index=names.index(DEFAULT_EXAMPLE) if DEFAULT_EXAMPLE in names else 0,
            key="photo",
            format_func=lambda s: services.example_label(services.EXAMPLES / f"{s}.jpg"),
            disabled=source != "Example",
            **QP,
        )
        if names
        else None
    )
    if data is not None:
        try:
            return services.decode(data, name, source.lower()), None
        except ValueError as exc:
            error = f"**{name}** could not be used: {exc}"
    if chosen is None:
        return None, error or "No example photos found in app/examples."
    path = examples[names.index(chosen)]
    return services.decode(path.read_bytes(), path.name, "example"), error


def sidebar_models(cat):
    sb = st.sidebar
    sb.header("Model")
    if cat.errors:
        with sb.expander(f"⚠ {len(cat.errors)} checkpoint file(s) could not be loaded", expanded=not cat.models):
            for fname, msg in cat.errors:
                st.error(f"{fname}: {msg}")
    if not cat.models:
        return None
    names = [m.name for m in cat.models]
    picked = sb.selectbox(
        "MGNet model",
        names,
        index=0,
        key="model",
        format_func=lambda n: f"{cat.by_name(n).short} · {cat.by_name(n).recipe}",
        help=f"Every .pt/.ckpt file in {cat.folder}: this project's checkpoints, the authors' "
        f"ImageNet-100 Lightning files, and baselines.",
        **QP,
    )
    entry = cat.by_name(picked) or cat.models[0]
    sb.caption(
        entry.label.split("(", 1)[1].rstrip(")") + f" · {len(entry.model.classes)} classes · "
        f"sha256 `{entry.sha256[:12]}`"
    )
    if entry.is_baseline:
        sb.caption("A baseline takes one full-resolution look; pick an MGNet to see glimpses.")
        n = None
    else:
        n = sb.slider(
            "Glimpses",
            1,
            8,
            value=entry.model.n_glimpses,
            key="glimpses",
            help="MGNet can run any number of glimpses (its weights do not depend on it); it was "
            "trained with " + str(entry.model.n_glimpses) + ".",
            **QP,
        )
    sb.caption(f"Device: **{services.device_text()}**  \nCheckpoints: `{cat.folder}`")
    return entry, n


def view_settings(photo, entry, n, view) -> dict:
    s = {
        "view": view,
        "photo": {
            "source": photo.source,
            "name": photo.name,
            "file_sha256": photo.file_sha256,
            "image_hash": photo.key,
            "width": photo.width,  # as decoded; glimpse boxes are in these pixels
            "height": photo.height,
            "file_size": list(photo.file_size),
        },
        "model": {
            "file": entry.name,
            "sha256": entry.sha256,
            "kind": entry.kind,
            "config": entry.model.config(),
            "n_glimpses": n,
        },
        "glimpse_step": glimpses.chosen_step(),
        "url_query": st.query_params.to_dict(),
    }
    requests = {
        key.replace("_request", ""): st.session_state.get(key)
        for key in ("cmp_request", "atk_request", "sweep_request")
    }
    s["requests"] = {
        name: {k: v for k, v in dataclasses.asdict(request).items() if k not in ("photo", "model")}
        for name, request in requests.items()
        if request is not None
    }
    return s


def safe_name(name: str) -> str:
    stem, dot, ext = Path(name).name.rpartition(".")
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in (stem or ext))[:80] or "photo"
    return f"{clean}.{''.join(c for c in ext if c.isalnum())[:5]}" if dot else clean


def _reference(model) -> CheckpointRef:
    return CheckpointRef(services.relative_path(model.path), model.sha256)


def figure_attack(request, entry, base) -> Attack | None:
    """The Attack tab's request in the figure tool's terms, or None when the tool cannot redraw it
    (it crafts untargeted attacks, on the MGNet or the baseline of the settings)."""
    if request is None or request.targeted:
        return None
    source = "mgnet" if request.source == entry.name else "baseline" if base and request.source == base.name else None
    if source is None:
        return None
    return Attack(
        method=request.method,
        eps=float(request.eps),
        steps=int(request.steps),
        norm=request.norm,
        source=source,
        true_grad=request.true_grad,
        step_size=request.step_size or None,
        random_start=request.random_start,
        seed=request.seed,
        queries=request.queries if request.method == "square" else None,
    )


def figure_document(photo, entry, n, view, cat) -> dict:
    """The view in the figure tool's settings (reproducible with python -m mgnet.figures --settings), built
    from the tabs' requests, never from their widgets."""
    ss = st.session_state
    compare_request = ss.get("cmp_request") if getattr(ss.get("cmp_request"), "photo", None) == photo.key else None
    attack_request = ss.get("atk_request") if getattr(ss.get("atk_request"), "photo", None) == photo.key else None
    corruption_request = ss.get("cor_request")
    if view == "Compare":
        chosen = compare_request.models if compare_request else []
    else:
        chosen = (attack_request or corruption_request).models if (attack_request or corruption_request) else []
    bases = [m for m in cat.baselines if services.compatible(entry, m)]
    base = next((m for m in bases if m.name in chosen), bases[0] if bases else None)
    robustness = view == "Robustness"
    settings = figure_settings(
        view,
        f"photo/{safe_name(photo.name)}",
        _reference(entry),
        _reference(base) if base else None,
        entry.glimpses(n),
        compare=compare_request if view == "Compare" else None,
        corruption=corruption_request if robustness else None,
        attack=figure_attack(attack_request, entry, base) if robustness else None,
    )
    return settings.to_json()


def sidebar_export(photo, entry, n, view, cat):
    reg = ui.registry()
    reg.settings.update(view_settings(photo, entry, n, view))
    figures, images, settings = dict(reg.figures), dict(reg.images), dict(reg.settings)
    doc = figure_document(photo, entry, n, view, cat)
    reg.settings["figure_settings"] = doc
    full, original = photo.image, (safe_name(photo.name), photo.data)

    def bundle() -> bytes:  # runs only when the button is clicked, on its own thread
        return build_bundle(
            figures,
            {"photo": plots.downscale(full, 2048), **images},
            settings,
            static=ui.export_available(),
            figure_doc=doc,
            photo=original,
        )

    sb = st.sidebar
    sb.header("Export")
    sb.download_button(
        "⬇ Download this view (zip)",
        bundle,
        file_name=f"mgnet-{view.lower()}-{photo.key[:8]}.zip",
        mime="application/zip",
        key="bundle",
        on_click="ignore",
        width="stretch",
        help="Every figure (PNG + SVG) and image of this view, the photo file, and a settings.json "
        "(checkpoint hashes, methods, seeds) that `python -m mgnet.figures --settings` "
        "reproduces.",
    )
    if not ui.export_available():
        sb.caption(f"PNG/SVG/PDF export is unavailable: {ui.export_problem()} The bundle holds HTML figures.")
    sb.caption(
        "The page address (URL) keeps this view's settings: copy it to share or bookmark the view. "
        "Uploaded photos are not in the URL."
    )


def known_classes(entry, a):
    """Say which classes the model knows, and warn when the photo looks unlike its training photos."""
    classes = list(a.classes)
    listed = ", ".join(classes) if len(classes) <= 20 else ", ".join(classes[:20]) + f" and {len(classes) - 20} more"
    check = services.unlike_check(entry, a)
    if check is not None and check["flagged"]:
        st.warning(
            f"**This photo looks unlike the photos {entry.short} was trained on.** It knows only "
            f"{len(classes)} classes and must answer with one of them, so '{a.classes[a.predicted()]}' may mean "
            f"nothing here. ({_unlike_reason(check)})",
            icon="⚠️",
        )
    st.caption(
        f"{entry.short} knows only these {len(classes)} classes and always picks one: {listed}. A confident "
        "answer does not mean the photo shows one of them. The unlike-photo warning catches images that no "
        "photo looks like (noise, flat colours, drawings); a real photo of something else can pass it."
    )
    if check is None:
        st.caption(
            "No unlike-photo check for this checkpoint: it has no calibration in ood.json (and ood-features.npz) "
            "beside the checkpoints (`python -m mgnet.modelcard --stage ood` writes them)."
        )


def _unlike_reason(check: dict) -> str:
    if check["score"] == "features":
        return (
            f"Unlike-photo score {check['value']:.1f}: how far the backbone's activations on the first look sit "
            f"from the training photos', at the most unusual backbone stage, in spreads of the validation photos' "
            f"scores; only {check['rate']:.0%} of validation photos score above {check['threshold']:.1f}."
        )
    return (
        f"Score {check['score']} = {check['value']:.2f}, above the threshold {check['threshold']:.2f} that "
        f"{check['rate']:.0%} of validation photos exceed."
    )


def main():
    st.set_page_config(page_title="MGNet Explorer", page_icon="👁", layout="wide")
    ui.new_registry()
    st.title("MGNet Explorer")
    st.caption(
        "Watch a Multi-Glimpse Network (Tan, Dong & Ma, BMVC 2021) look at a photo: where it looks, what it "
        "believes after each look, how it compares with saliency maps of ordinary CNNs, and how it holds up "
        "under corruptions and attacks."
    )
    photo, error = sidebar_photo()
    if error:
        st.error(error + " Showing the selected example instead.")
    cat = services.catalog()
    picked = sidebar_models(cat)
    if picked is None:
        st.error(
            f"No usable checkpoint in `{cat.folder}`. Put MGNet/baseline .pt files or the authors' .ckpt "
            "files there (or set MGNET_CHECKPOINTS), then reload the page."
        )
        st.stop()
    entry, n = picked
    if photo is None:
        st.stop()
    a = None
    with ui.panel("Analysis"):
        with st.spinner("MGNet is looking at the photo…"):
            a = services.analyze(entry, photo, n)
    if a is None:
        st.stop()
    name, p = a.top(-1, 1)[0]
    st.markdown(
        f"**{photo.name}** · {photo.size_text()} · {entry.short}: **{name}** ({p:.0%}) after "
        f"{a.n_glimpses} glimpse{'s' if a.n_glimpses > 1 else ''} · {a.seconds * 1000:.0f} ms on "
        f"{services.device().type.upper()}"
    )
    with ui.panel("Unlike-photo check"):
        known_classes(entry, a)
    tabs = st.tabs(VIEWS, key="view", on_change="rerun", bind="query-params")
    view = next((v for v, t in zip(VIEWS, tabs) if t.open), VIEWS[0])
    settings = {"n_glimpses": n}
    with tabs[0]:
        if tabs[0].open:
            with ui.panel("Glimpses"):
                glimpses.render(photo, entry, a)
    with tabs[1]:
        if tabs[1].open:
            with ui.panel("Compare"):
                compare.render(photo, entry, a, cat, settings)
    with tabs[2]:
        if tabs[2].open:
            with ui.panel("Robustness"):
                robustness.render(photo, entry, a, cat, settings)
    with ui.panel("Export"):
        sidebar_export(photo, entry, n, view, cat)


if __name__ == "__main__":  # `streamlit run app/main.py` (and AppTest) run it as __main__; importing does not
    main()
