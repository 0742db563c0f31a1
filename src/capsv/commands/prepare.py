"""``capsv prepare``: download and prepare VoxCeleb (and MUSAN + RIRs for augmentation)."""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from ..prep import voxceleb
from ..prep.download import Credentials, read_parts_list

HELP = "download and prepare VoxCeleb, its lists and the augmentation data"
DESCRIPTION = """\
Download and prepare VoxCeleb for training and evaluation. Each step is resumable: a re-run
skips what is finished (verified downloads, extracted archives, converted files).

steps (give one or more; they run in this order):
  --download     fetch the parts in parallel, resuming partial files; md5-verified
  --concatenate  join the split parts into vox1_dev_wav.zip / vox2_dev_aac.zip; md5-verified
  --extract      (joins if needed, then) extracts into <dataset_dir>/voxceleb1, voxceleb2
  --convert      VoxCeleb2 .m4a -> 16 kHz mono WAV in parallel (--workers); bad files are
                 listed in <save_path>/conversion_failures.txt and the rest go on
  --lists        write <save_path>/train_list.txt from <dataset_dir>/voxceleb2, fetch the
                 VoxCeleb1 trial lists (--test_lists) and check that every file they name exists
  --augment      fetch MUSAN and the simulated RIRs, cut MUSAN into 5 s pieces
  --all          all of the above

credentials: VoxCeleb's host has changed over the years. Old style: --user and a password
(--password, the CAPSV_PASSWORD environment variable, or a prompt). New style: --key KEY with
--base_url set to the address from the access e-mail (files are fetched as
<base_url>?file=<name>&key=<KEY>). A --base_url containing {file} (and {key}) is used as a
template. Secrets never appear in the output.

examples:
  capsv prepare --save_path data --download --user USER          # asks for the password
  capsv prepare --save_path data --download --user USER --subsets vox2_dev vox1_test
  capsv prepare --save_path data --download --key KEY --base_url https://host/download/voxceleb
  capsv prepare --save_path data --extract --convert --lists --workers 8
  capsv prepare --save_path data --augment

then train with --train_list data/train_list.txt --train_path data/voxceleb/voxceleb2
--test_list data/veri_test.txt --test_path data/voxceleb/voxceleb1 (and, for augmentation,
--musan_path data/musan_split --rir_path data/RIRS_NOISES/simulated_rirs).
"""

STEPS = ("download", "concatenate", "extract", "convert", "lists", "augment")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save_path", default="data", help="download and output folder (default: %(default)s)")
    p.add_argument("--dataset_dir", help="where the audio is extracted (default: <save_path>/voxceleb)")
    g = p.add_argument_group("steps")
    for step in STEPS:
        g.add_argument(f"--{step}", action="store_true", help=f"run the {step} step")
    g.add_argument("--all", action="store_true", help="run every step")

    g = p.add_argument_group("download")
    g.add_argument("--user", default=os.environ.get("CAPSV_USER"),
                   help="user name for HTTP basic auth (or CAPSV_USER)")
    g.add_argument("--password", help="password for --user; prefer CAPSV_PASSWORD or the prompt "
                   "(asked if absent), as a flag it is visible to other users in `ps`")
    g.add_argument("--key", help="access key, sent as ?file=<name>&key=<KEY> (or CAPSV_KEY)")
    g.add_argument("--base_url", help="where the files are; {file}/{key} placeholders allowed "
                   f"(default: {voxceleb.DEFAULT_BASE_URL}; required with --key)")
    g.add_argument("--parts_list", help="file of '<name> <md5> [url]' lines replacing the built-in "
                   "VoxCeleb table; '<prefix>_partXX' files are joined into '<prefix>.zip', and a "
                   "'<prefix>.zip <md5>' line gives the joined file's md5")
    g.add_argument("--subsets", nargs="+", choices=voxceleb.SUBSETS,
                   help="only these parts of VoxCeleb (default: all four); the paper trains on "
                   "vox2_dev and tests on vox1_test")
    g.add_argument("--jobs", type=int, default=4, help="parallel downloads (default: %(default)s)")
    g.add_argument("--retries", type=int, default=3,
                   help="retries per file after a network error, resuming (default: %(default)s)")

    g = p.add_argument_group("convert")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="conversion processes (default: all %(default)s cores)")

    g = p.add_argument_group("lists")
    g.add_argument("--train_root", help="speaker/video/clip tree to list "
                   "(default: <dataset_dir>/voxceleb2)")
    g.add_argument("--train_list", help="train list to write (default: <save_path>/train_list.txt)")
    g.add_argument("--list_ext", default="auto", choices=["auto", "wav", "m4a"],
                   help="files to list; auto = WAV if there are any, else m4a (default: %(default)s)")
    g.add_argument("--test_lists", nargs="+", default=voxceleb.DEFAULT_TRIAL_LISTS,
                   help="trial lists to fetch (if absent from save_path) and check: names from "
                   f"{', '.join(voxceleb.TRIAL_LISTS)}, 'all' or 'none' (default: %(default)s)")
    g.add_argument("--test_root", help="folder the trial paths are relative to "
                   "(default: <dataset_dir>/voxceleb1)")
    g.add_argument("--meta_url", default=voxceleb.DEFAULT_META_URL,
                   help="where the trial lists are published (default: %(default)s)")

    g = p.add_argument_group("augment")
    g.add_argument("--aug_base_url", help="fetch musan.tar.gz and rirs_noises.zip from here "
                   "instead of OpenSLR")
    g.add_argument("--aug_parts_list", help="'<name> <md5> [url]' lines replacing the built-in "
                   "MUSAN/RIR table")

    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    p.add_argument("--config", help="YAML file of flag values; flags typed on the command line win")


def resolve_credentials(args: argparse.Namespace) -> Credentials:
    """Credentials from flags, then the environment, then a prompt (password only)."""
    key = args.key or os.environ.get("CAPSV_KEY")
    password = args.password if args.password is not None else os.environ.get("CAPSV_PASSWORD")
    if key and not args.base_url:
        raise voxceleb.PrepareError("--key needs --base_url: the download address from the access "
                                    "e-mail, without the '?file=...&key=...' part")
    if args.password is not None:
        print("capsv prepare: warning: a password given with --password is visible to other "
              "users of this machine (ps, /proc) while the download runs; next time set "
              "CAPSV_PASSWORD or let capsv ask for it", file=sys.stderr, flush=True)
    if args.user and password is None:
        if not sys.stdin.isatty():
            raise voxceleb.PrepareError(f"no password for --user {args.user}: give --password, set "
                                        "CAPSV_PASSWORD, or run in a terminal to be asked")
        password = getpass.getpass(f"password for {args.user}: ")
    return Credentials(args.user, password, key)


def run(args: argparse.Namespace) -> int:
    steps = [s for s in STEPS if args.all or getattr(args, s)]
    if not steps:
        raise voxceleb.PrepareError("no step given: add one or more of "
                                    + ", ".join(f"--{s}" for s in STEPS) + " (or --all)")
    save_path = args.save_path
    dataset_dir = args.dataset_dir or os.path.join(save_path, "voxceleb")
    progress = not args.no_progress
    table = read_parts_list(args.parts_list) if args.parts_list else voxceleb.VOXCELEB_FILES
    if args.subsets:
        table = voxceleb.select_subsets(table, args.subsets)
    plan = voxceleb.make_plan(table)
    os.makedirs(save_path, exist_ok=True)
    problems: list[str] = []

    if "download" in steps:
        credentials = resolve_credentials(args)
        voxceleb.download(plan, save_path, args.base_url or voxceleb.DEFAULT_BASE_URL, credentials,
                          jobs=args.jobs, progress=progress, retries=args.retries)
    if "concatenate" in steps and plan.joins and not voxceleb.join_parts(plan, save_path, progress):
        raise voxceleb.PrepareError(f"no parts to join in {save_path}; run with --download first")
    if "extract" in steps:
        voxceleb.extract(plan, save_path, dataset_dir, progress)
    if "convert" in steps:
        report = voxceleb.convert(dataset_dir, save_path, args.workers, progress)
        if report.failures:
            problems.append(f"{len(report.failures)} files could not be converted; they are listed "
                            f"in {voxceleb.failures_file(save_path)}")
    if "lists" in steps:
        problems += make_lists(args, save_path, dataset_dir, progress)
    if "augment" in steps:
        from ..prep import musan as musan_prep
        aug_table = read_parts_list(args.aug_parts_list) if args.aug_parts_list else musan_prep.AUGMENT_FILES
        musan, rirs = musan_prep.prepare_augment(save_path, aug_table, args.aug_base_url,
                                              workers=args.workers, progress=progress)
        print(f"augmentation data ready: --musan_path {musan} --rir_path {rirs}")

    if problems:
        print("capsv prepare: finished with problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def make_lists(args: argparse.Namespace, save_path: str, dataset_dir: str, progress: bool) -> list[str]:
    """Write the train list, fetch and check the trial lists; return the problems found."""
    train_root = args.train_root or os.path.join(dataset_dir, "voxceleb2")
    train_list = args.train_list or os.path.join(save_path, "train_list.txt")
    lines, speakers, ext = voxceleb.write_train_list(train_root, train_list, args.list_ext)
    print(f"{train_list}: {lines} {ext} files of {speakers} speakers (relative to {train_root})")

    problems = []
    names = voxceleb.trial_list_names(args.test_lists)
    test_root = args.test_root or os.path.join(dataset_dir, "voxceleb1")
    for path in voxceleb.fetch_trial_lists(names, save_path, args.meta_url, progress):
        missing = voxceleb.check_trial_list(path, test_root)
        if not missing:
            print(f"{path}: every file is present under {test_root}")
            continue
        report = os.path.splitext(path)[0] + ".missing.txt"
        voxceleb.write_text_atomic(report, "".join(m + "\n" for m in missing))
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        problems.append(f"{path}: {len(missing)} files are missing under {test_root} ({shown}); "
                        f"all are listed in {report}")
    return problems


def legacy_main(argv: list[str] | None = None) -> int:
    """``python dataprep.py`` with the seed README's flags; ``--convert`` also writes the lists."""
    from ..cli import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--convert" in argv and "--lists" not in argv:
        argv.append("--lists")
    return run_command("prepare", argv, prog="dataprep.py")
