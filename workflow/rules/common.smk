# Input functions shared by the rules.


def adapt_job_queries(cells):
    """An input function: the query sets of a job's cells for the job's seed — the clean dataset
    for the reference run, a stream's set, else the corrupted set (drawn for the run's seed under
    seed_corruptions: qshift.config.draw_seed)."""

    def queries(w):
        out = []
        for r in cells:
            if r.corruption == "clean":
                out.append(DATASET_DIR)
            elif qc.is_stream(config, r.direction, r.corruption):  # a multi-domain stream (corrupt_stream_*)
                out.append(qc.stream_path(config, r.direction, r.corruption, int(w.seed)))
            else:
                out.append(qc.query_set_path(config, r.direction, r.corruption, r.severity, int(w.seed)))
        return list(dict.fromkeys(out))

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
