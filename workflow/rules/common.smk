# Input functions shared by the rules.


def adapt_job_queries(cells):
    """An input function: the query sets of a job's cells for the job's seed (qshift.cells.query_input:
    a stream's set, else the corrupted set, drawn for the run's seed under seed_corruptions) — for the
    clean reference run the dataset folder, the prepare rule's output."""

    def queries(w):
        return list(dict.fromkeys(DATASET_DIR if r.corruption == "clean" else
                                  qcells.query_input(config, dataclasses.replace(r, seed=int(w.seed)))
                                  for r in cells))

    return queries


def adapt_params(method):
    """Hash of what every cell of a method's adapt jobs reads from the params (the cells themselves
    are the rule's outputs; qshift.cells fingerprints each cell)."""
    order = config["adapt"].get("order", "seeded")  # in the hash only when not the default
    return stable_hash([config["seed"], config["adapt"]["batch_size"], config["adapt"]["steps"], config["amp"],
                        _method_entry(method)] + ([order] if order != "seeded" else [])
                       + (["grad_angle"] if qc.probes_angle(config, method) else []))


def _method_entry(method):
    """A method's params entry; a variant's together with its base chain (a changed base reruns it)."""
    if not qc.is_variant(config, method):
        return config["methods"][method]
    return [config["methods"][method], _method_entry(config["methods"][method][qc.VARIANT_KEY])] \
        if config["methods"][method][qc.VARIANT_KEY] in config["methods"] else [config["methods"][method]]


def prebuilt_params():
    """The authors' prebuilt folder (datasets.<name>.prebuilt) in a query rule's hash, only when set."""
    from qshift.data.prebuilt import prebuilt_dir

    root = prebuilt_dir(config)
    return [] if root is None else [str(root)]


def stream_params(w, side):
    """Hash of what a stream's query set depends on: the seed, its definition (and JPEG quality)."""
    spec = ((config.get("streams") or {}).get(side) or {}).get(w.stream)
    extra = config["corrupt"]["image"]["jpeg_quality"] if side == "image" else None
    return stable_hash([config["seed"], spec, extra])
