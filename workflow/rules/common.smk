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
