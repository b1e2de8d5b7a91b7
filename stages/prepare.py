"""Stage `prepare`: build the benchmark's test/train data in the manifest format.

Built-in benchmark: procedurally rendered scenes with 5 captions each, from the seed.
Output: data/<benchmark>/ (images/ + manifest.json).
"""

from qshift import cli


def main() -> None:
    from qshift.config import DATASET_DIR, LOGS
    from qshift.data.builtin import generate_builtin
    from qshift.errors import ConfigError

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    name = cfg["benchmark"]
    if name != "builtin":
        raise ConfigError(f"prepare: benchmark {name!r} has no generator; only 'builtin' is generated "
                          f"(real datasets come from the download stage)")
    d = cfg["datasets"][name]
    log = cli.start_log(LOGS["prepare"].format(dataset=name))
    stats = generate_builtin(DATASET_DIR.format(dataset=name), n_train=d["n_train"], n_val=d["n_val"],
                             n_test=d["n_test"], image_size=d["image_size"], seed=cfg["seed"],
                             progress=cli.progress_enabled(args))
    log.info("prepare: %s", stats)


if __name__ == "__main__":
    cli.run(main)
