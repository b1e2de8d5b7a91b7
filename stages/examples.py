"""Stage `examples`: what the corruptions look like, for the report.

Inputs: params.yaml and the benchmark's manifest (data/<benchmark>/manifest.json) with its
test images. Outputs, under <report.dir>/corruptions/:
  contact_sheet.png  one test image under all 16 benchmark image corruptions x severities 1-5
  text_examples.md   test captions under every text corruption type x levels 1-7
                     (model-based types without a configured model read "not run")
  examples.json      the same text cells, the image's id and the seeds' recipe
Seeds are the pipeline's, so every cell is the query the adapt stage sees.
"""

from qshift import cli


def main() -> None:
    from pathlib import Path

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from qshift.config import MANIFEST
    from qshift.corrupt.examples import contact_sheet, pipeline_seed, text_examples
    from qshift.corrupt.image import BENCHMARK_IMAGE
    from qshift.corrupt.text import TEXT_CORRUPTIONS, TEXT_LABELS, corrupt_text
    from qshift.data.manifest import image_root, read_manifest
    from qshift.errors import ConfigError, InputError
    from qshift.io import write_json

    p = cli.parser(__doc__)
    p.add_argument("--image", type=int, default=0, help="index of the test image on the contact sheet (default 0)")
    p.add_argument("--captions", type=int, default=2, help="how many test captions to show (default 2)")
    args = p.parse_args()
    cfg = cli.load(args)
    ds = cfg["benchmark"]
    log = cli.start_log(f"logs/examples/{ds}.log")
    from qshift.tasks import cfg_task, hook

    task_examples = hook(cfg_task(cfg).name, "examples")  # video-audio: frame strips + log-mel thumbnails
    if task_examples is not None:
        stats = task_examples(cfg, Path(cfg["report"]["dir"]) / "corruptions")
        log.info("examples: %s", stats)
        return
    manifest = Path(MANIFEST.format(dataset=ds))
    doc = read_manifest(manifest)
    dataset = doc.get("dataset", ds)
    test = [im for im in doc["images"] if im["split"] == "test"]
    if not test:
        raise InputError(f"manifest {manifest} has no test split")
    if not 0 <= args.image < len(test):
        raise ConfigError(f"--image {args.image} out of range: the test split has {len(test)} images (0..{len(test) - 1})")
    if args.captions < 1:
        raise ConfigError(f"--captions must be >= 1, got {args.captions}")
    out = Path(cfg["report"]["dir"]) / "corruptions"

    im = test[args.image]
    src = image_root(doc, manifest) / im.get("filepath", "") / im["filename"]
    try:
        with Image.open(src) as pil:
            arr = np.asarray(pil.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"cannot read image {src}: {e}") from None
    from qshift.corrupt import mm_robustness

    impl = cfg["corrupt"]["image"].get("implementation", "imagecorruptions")  # corrupt.image.implementation
    options = mm_robustness.options(cfg["corrupt"]["image"], dataset) if impl == "mm_robustness" else None
    contact_sheet(arr, BENCHMARK_IMAGE, range(1, 6), out / "contact_sheet.png",
                  seed_for=pipeline_seed(dataset, im["imgid"]), progress=cli.progress_enabled(args),
                  implementation=impl, options=options)

    sents = [s for t in test for s in t["sentences"][:1]][:args.captions]  # first caption of the first images
    names = [n for n in TEXT_LABELS if n in TEXT_CORRUPTIONS] + [n for n in TEXT_CORRUPTIONS if n not in TEXT_LABELS]
    text = text_examples([s["raw"] for s in sents], names, range(1, 8), out / "text_examples.md",
                         corrupt=lambda n, t, lv, sd: corrupt_text(n, t, lv, sd, cfg=cfg),  # params name the models
                         seed_for=[pipeline_seed(dataset, s["sentid"]) for s in sents],
                         labels=TEXT_LABELS)
    from qshift.tasks import is_cir

    composed = None
    if is_cir(cfg):  # composed image retrieval: the captions are modification texts (qshift.cir)
        from qshift.cir import composed_examples

        composed = composed_examples(manifest.parent, [s["sentid"] for s in sents], out / "text_examples.md", src)
    write_json(out / "examples.json", {
        "dataset": dataset, "seed": "derive_seed(dataset, id, corruption, severity or level)",
        "contact_sheet": {"image": str(src), "imgid": im["imgid"], "corruptions": list(BENCHMARK_IMAGE),
                          "severities": list(range(1, 6)),
                          **({"implementation": {"name": impl, **options}} if options else {})},
        "text": {"sentids": [s["sentid"] for s in sents], **text},
        **({"composed": composed} if composed is not None else {}),
    })
    log.info("examples: %s, %s (%d text types not run)", out / "contact_sheet.png", out / "text_examples.md",
             len(text["not_run"]))


if __name__ == "__main__":
    cli.run(main)
