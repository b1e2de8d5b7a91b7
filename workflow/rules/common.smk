# Input functions shared by the rules.


def adapt_queries(w):
    """The run's query set: the clean dataset for the reference run, else the corrupted set."""
    if w.corruption == "clean":
        return DATASET_DIR
    if w.direction == "i2t":
        return qc.IMAGE_QUERIES.format(dataset=DS, corruption=w.corruption, severity=w.severity)
    return qc.TEXT_QUERIES.format(dataset=DS, corruption=w.corruption, severity=w.severity)


def adapt_params(w):
    return stable_hash([config["seed"], config["adapt"]["batch_size"], config["adapt"]["steps"], config["amp"],
                        config["methods"][w.method]])
