"""What a grid job runs: ``RunSequence``, a ``submitit.helpers.Checkpointable`` that trains its runs one after the
other in the job's own process (``python -m spanet_pl fit`` in-process, so Lightning sees the job's SLURM
environment and every task of a multi-GPU / multi-node job joins the same DDP run).

On preemption or time-out submitit calls ``checkpoint``: the same sequence is queued again, skips the runs that are
done and resumes the cut one from its ``checkpoints/last.ckpt``.
"""
import gc
import importlib.util
import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import submitit

from .state import RUN_LOG, RUN_STATE, read_json, tail, update_run_state

__all__ = ['RunSequence', 'USER_ERROR_EXIT']

USER_ERROR_EXIT = 2  # spanet_pl's CLI exit status for bad input and diverging runs (``spanet_pl: error: ...``)


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so DataLoader workers and DDP children
    too) to ``path``, appending."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, 'ab', buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


@contextmanager
def _as_cli(args: List[str]) -> Iterator[None]:
    """Look like ``python -m spanet_pl <args>`` while a run trains: Lightning starts the other ranks of a local
    multi-device run by re-running this process's command (``python -m <__main__'s module> <sys.argv[1:]>``),
    which in a job would be submitit's, not the CLI."""
    import __main__
    saved = sys.argv, getattr(__main__, '__spec__', None)
    sys.argv, __main__.__spec__ = [sys.argv[0], *args], importlib.util.find_spec('spanet_pl.__main__')
    try:
        yield
    finally:
        sys.argv, __main__.__spec__ = saved


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), '')


class RunSequence(submitit.helpers.Checkpointable):
    """Train ``runs`` (``{'name', 'dir', 'config_sha'}``; each config is ``<dir>/cell.yaml``) one after the other.

    Args:
        runs: the runs of this job, in order.
        cwd: the folder the grid was started from (relative paths in the configs are relative to it).
        threads: torch threads per process (local CPU jobs share the machine's cores), None to keep the default.
    """

    def __init__(self, runs: List[Dict[str, str]], cwd: str, threads: Optional[int] = None):
        self.runs = runs
        self.cwd = cwd
        self.threads = threads

    def __call__(self) -> List[Dict[str, Any]]:
        os.chdir(self.cwd)
        if self.threads:
            import torch
            torch.set_num_threads(self.threads)
        env = submitit.JobEnvironment()
        results = []
        for run in self.runs:
            results.append(self._run(run, env))
            gc.collect()  # the finished run's trainer, model and loaders go before the next run starts
        return results

    def _run(self, run: Dict[str, str], env: Any) -> Dict[str, Any]:
        run_dir = Path(run['dir'])
        state = read_json(run_dir / RUN_STATE)
        if state.get('status') in ('done', 'failed') and state.get('config_sha') == run['config_sha']:
            return {'run': run['name'], 'status': state['status']}  # finished before a requeue of this job
        rank = env.global_rank
        last = run_dir / 'checkpoints' / 'last.ckpt'
        resume = last if last.is_file() and state.get('config_sha') == run['config_sha'] else None
        args = ['fit', '--config', str(run_dir / 'cell.yaml')] + (['--ckpt_path', str(last)] if resume else [])
        if rank == 0:
            update_run_state(run_dir, status='running', config_sha=run['config_sha'], job_id=env.job_id,
                             host=socket.gethostname(), attempts=int(state.get('attempts') or 0) + 1,
                             resumed_from=str(resume) if resume else None, error=None,
                             started=time.strftime('%Y-%m-%d %H:%M:%S'))
        log = run_dir / (RUN_LOG if rank == 0 else f'run.rank{rank}.log')
        status, error = 'done', None
        with _output_to(log), _as_cli(args):
            print(f'\n=== spanet_pl.grid {time.strftime("%Y-%m-%d %H:%M:%S")} job {env.job_id} rank {rank}: '
                  f'{"resuming from " + str(resume) if resume else "starting"}\n$ python -m spanet_pl {" ".join(args)}',
                  flush=True)
            try:
                from ..__main__ import main
                main()  # parses sys.argv (see _as_cli); the returned CLI is dropped, the next run starts clean
            except SystemExit as exit_:
                if exit_.code != USER_ERROR_EXIT:  # Ctrl-C, a cancel, submitit's requeue: the job stops here
                    self._record(rank, run_dir, 'interrupted', f'stopped (exit {exit_.code})')
                    raise
                status, error = 'failed', None  # the CLI printed its one-line error into the log
            except Exception as e:  # a crash of this run; the job goes on with its next run
                traceback.print_exc()
                status, error = 'failed', f'{type(e).__name__}: {e}'
            except BaseException:
                self._record(rank, run_dir, 'interrupted', 'interrupted')
                raise
        if status == 'failed' and error is None:
            error = _last_line(tail(log))
        self._record(rank, run_dir, status, error)
        return {'run': run['name'], 'status': status, 'error': error}

    @staticmethod
    def _record(rank: int, run_dir: Path, status: str, error: Optional[str]) -> None:
        if rank == 0:
            update_run_state(run_dir, status=status, error=error, ended=time.strftime('%Y-%m-%d %H:%M:%S'))
