# Input functions shared by the rules.


def adapt_queries(w):
    """The run's query set: the clean dataset for the reference run, a stream's set, else the
    corrupted set (drawn for the run's seed under seed_corruptions: qshift.config.draw_seed)."""
    if w.corruption == "clean":
        return DATASET_DIR
    if qc.is_stream(config, w.direction, w.corruption):  # a multi-domain stream (corrupt_stream_*)
        return qc.stream_path(config, w.direction, w.corruption, int(w.seed))
    return qc.query_set_path(config, w.direction, w.corruption, int(w.severity), int(w.seed))


def adapt_params(w):
    order = config["adapt"].get("order", "seeded")  # in the hash only when not the default
    return stable_hash([config["seed"], config["adapt"]["batch_size"], config["adapt"]["steps"], config["amp"],
                        _method_entry(w.method)] + ([order] if order != "seeded" else []))


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
