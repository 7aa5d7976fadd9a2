"""Timing with every model in its own process, iterations still interleaved.

Interleaving the iterations of several models in one process makes every model see the same machine load, but on
the CPU it also makes them share one heap: glibc hands pages back to the kernel and faults them in again depending
on what the model before freed, so a model's time depends on its neighbours (on the 2-core machine SPANetV2-S18's
train step read 0.83x CAFormer-S18's beside the official models and 1.05x beside CAFormer alone, in runs minutes
apart). A user trains one model per process. Here each model lives in a worker process of its own (spawned, so no
state is shared), and the coordinator asks the workers for one step each in turn: one runs at a time, all see the
same load, none sees another's heap.
"""
import multiprocessing
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .errors import one_line
from .timing import interleaved_rounds, peak_memory_mb, sync, timed_call

__all__ = ['StepWorker', 'time_isolated']


def _serve(factory: Callable[[], Callable], device: str, threads: int, conn) -> None:
    """Worker loop: build the step, run it once (errors go back as one line), then time steps on request."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    try:
        step = factory()
        step()
        sync(dev)
    except Exception as e:  # noqa: BLE001  (reported by the coordinator, which goes on with the other models)
        conn.send(('error', one_line(e)))
        conn.close()
        return
    conn.send(('ready', None))
    while True:
        command = conn.recv()
        if command == 'step':
            conn.send(timed_call(step, dev))
        elif command == 'memory':
            conn.send(peak_memory_mb(step, dev))
        else:
            break
    conn.close()


class StepWorker:
    """A spawned process that builds ``factory()`` (a picklable callable returning a step function) and runs the
    step when asked. Starting returns at once (workers build their models in parallel); ``ready()`` waits for the
    build and the first call, and leaves the one-line reason in ``error`` when either failed."""

    def __init__(self, factory: Callable[[], Callable], device: str = 'cpu', threads: Optional[int] = None):
        context = multiprocessing.get_context('spawn')
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, daemon=True,
                                        args=(factory, device, threads or torch.get_num_threads(), child))
        self._process.start()
        child.close()
        self._ready = False
        self.error: Optional[str] = None

    def ready(self) -> bool:
        if not self._ready and self.error is None:
            try:
                status, detail = self._conn.recv()
            except EOFError:
                self._process.join(5)
                status, detail = 'error', f'worker process exited (code {self._process.exitcode})'
            if status == 'error':
                self.error = detail
                self.close()
            self._ready = status == 'ready'
        return self._ready

    def step(self) -> float:
        """Seconds of one step."""
        self._conn.send('step')
        return self._conn.recv()

    def memory(self) -> Optional[float]:
        """Peak memory of one step in the worker (``timing.peak_memory_mb``)."""
        self._conn.send('memory')
        return self._conn.recv()

    def close(self) -> None:
        if self._conn.closed:
            return
        if self._process.is_alive():
            try:
                self._conn.send('stop')
            except (BrokenPipeError, OSError):
                pass
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()


def time_isolated(workers: Sequence[StepWorker], warmup: int, iters: int,
                  memory: bool = False) -> List[Tuple[Optional[List[float]], Optional[float]]]:
    """(seconds of every step, peak MB or None) of every worker, iterations alternating between the workers (step i
    of every worker ran in round i); (None, None) for a worker that failed to start."""
    alive = [w for w in workers if w.ready()]
    times = iter(interleaved_rounds([w.step for w in alive], warmup, iters))
    return [(None, None) if not w.ready() else (next(times), w.memory() if memory else None) for w in workers]
