"""Pre-fetch model weights into the model cache, then check that they load offline.

Compute nodes often have no internet. Run this once where there is (a login node), on the
shared file system, before submitting jobs:

    python scripts/fetch_models.py                              # model.source from params.yaml
    python scripts/fetch_models.py hf-blip:Salesforce/blip-itm-base-coco open_clip:ViT-B-16@openai
    python scripts/fetch_models.py --cache-dir /shared/models/cache hf-clip:openai/clip-vit-base-patch16

Each source is loaded through the same code the stages use (downloading what the cache lacks
into ``model.cache_dir``) and then loaded again with the network switched off, so a success
here means the jobs will find everything they need. Exits 2 with a clear message otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from qshift import cli  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="*", help="model sources (default: model.source from the params file)")
    p.add_argument("--cache-dir", help="cache folder (default: model.cache_dir from the params file)")
    args = p.parse_args()
    from qshift.models.base import DEFAULT_CACHE_DIR, cache_only, load_model

    cfg = cli.load(args) if not (args.sources and args.cache_dir) else {"model": {}}
    sources = args.sources or [cfg["model"]["source"]]
    cache_dir = Path(args.cache_dir or cfg["model"].get("cache_dir") or DEFAULT_CACHE_DIR)
    for source in sources:
        load_model(source, "cpu", cache_dir)  # downloads what the cache lacks
        with cache_only():  # what a job without internet will do
            model = load_model(source, "cpu", cache_dir)
        n = sum(p.numel() for p in model.module.parameters())
        print(f"{source}: {model.name}, {n / 1e6:.1f}M parameters, loads offline from {cache_dir}")


if __name__ == "__main__":
    cli.run(main)
