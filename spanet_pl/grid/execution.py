"""Runs → submitit jobs: ``local`` (``submitit.LocalExecutor``: N jobs at once on this machine, one per GPU on a GPU
machine) or ``slurm`` (``submitit.SlurmExecutor``: one job array per grid, each task one run, requeued on
preemption or time-out). Job ids are recorded per run in ``<grid>/jobs.json``; whether a job is still alive is asked
of the engine (``sacct`` for SLURM; for a local job, whose id is its controller's process id, the process)."""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .spec import GridError, Run

__all__ = ['EXECUTORS', 'OPTIONS', 'executor_options', 'Plan', 'make_plan', 'submit', 'job_alive', 'cancel']

EXECUTORS = ('local', 'slurm')
# name → (type, help); the same names in a grid file's ``executor:`` section and (with dashes) on the command line.
OPTIONS = {
    'max_parallel': (int, 'local: runs at once (default: one per GPU group on a GPU machine, else 1)'),
    'time': (str, 'time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (slurm default 24:00:00; local none)'),
    'partition': (str, 'slurm partition'),
    'account': (str, 'slurm account'),
    'qos': (str, 'slurm quality of service'),
    'constraint': (str, 'slurm node constraint'),
    'nodes': (int, 'slurm nodes per run (default trainer.num_nodes)'),
    'gpus_per_node': (int, 'slurm GPUs per node (default trainer.devices when it uses GPUs); one task per GPU'),
    'cpus_per_task': (int, 'slurm CPUs per task (data loading workers + 1 is a good start)'),
    'mem_gb': (float, 'slurm memory per node in GB'),
    'array_parallelism': (int, 'slurm: array tasks running at once (default all)'),
    'signal_delay_s': (int, 'seconds between the preemption / time-out signal and the kill (default 120)'),
    'max_requeues': (int, 'requeues after a time-out (preemptions always requeue; default 3)'),
    'setup': (list, 'slurm: shell lines run before the job (module load ..., source venv/bin/activate)'),
}
NO_LIMIT_MIN = 60 * 24 * 365
GPU_ACCELERATORS = ('auto', 'gpu', 'cuda')


def _minutes(value: Any, where: str) -> int:
    text = str(value).strip()
    match = re.fullmatch(r'(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)', text)
    if text.isdigit():
        minutes = int(text)
    elif match:
        days, hours, mins, secs = (int(g) if g else 0 for g in match.groups())
        minutes = days * 1440 + hours * 60 + mins + (secs > 0)
    else:
        raise GridError(f'{where}: time {value!r} must be minutes, HH:MM:SS or D-HH:MM:SS')
    if minutes < 1:
        raise GridError(f'{where}: time {value!r} must be at least one minute')
    return minutes


def _check_option(key: str, value: Any, where: str) -> Any:
    if key not in OPTIONS:
        raise GridError(f'{where}: unknown executor option {key!r}; allowed: name, {", ".join(OPTIONS)}')
    kind = OPTIONS[key][0]
    if key == 'time':
        return _minutes(value, where)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GridError(f'{where}: {key} must be a list of shell lines, got {value!r}')
    elif kind in (int, float):
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not ok or value <= 0:
            raise GridError(f'{where}: {key} must be a positive {kind.__name__}, got {value!r}')
    elif not isinstance(value, str) or not value:
        raise GridError(f'{where}: {key} must be a non-empty string, got {value!r}')
    return value


def executor_options(section: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """A grid file's ``executor:`` section (``where`` names the file) with command-line ``overrides`` on top
    (None: not given), checked: ``name`` plus ``OPTIONS``; one line naming the file or option, key and value on
    anything else."""
    out: Dict[str, Any] = {'name': 'local'}
    given = [(dict(section), f'{where}: executor'), ({k: v for k, v in overrides.items() if v is not None}, None)]
    for options, origin in given:
        for key, value in options.items():
            label = origin or f'--{key.replace("_", "-")}'
            if key == 'name':
                if value not in EXECUTORS:
                    raise GridError(f'{label}: executor {value!r} is not one of {", ".join(EXECUTORS)}')
                out['name'] = value
            else:
                out[key] = _check_option(key, value, label)
    return out


@dataclass
class Plan:
    """Which runs go to which job, and with what resources."""
    kind: str
    jobs: List[List[Run]]
    parameters: Dict[str, Any]  # SlurmExecutor / LocalExecutor parameters shared by every job
    gpus: List[List[int]] = field(default_factory=list)  # local: the GPUs of each job
    threads: Optional[int] = None  # local CPU jobs: torch threads each
    max_requeues: int = 3

    def describe(self) -> str:
        if self.kind == 'slurm':
            shown = {k: v for k, v in self.parameters.items() if k != 'setup'}
            return (f'slurm: one job array of {len(self.jobs)} task(s), each '
                    + ', '.join(f'{k}={v}' for k, v in shown.items()))
        where = [f'GPUs {",".join(map(str, g))}' if g else 'CPU' for g in self.gpus]
        return f'local: {len(self.jobs)} job(s) at once ({"; ".join(where)}), each running its runs in turn'


def _trainer_shape(run: Run) -> Dict[str, Any]:
    trainer = run.config.get('trainer') or {}
    return {'accelerator': str(trainer.get('accelerator', 'auto')), 'devices': trainer.get('devices', 'auto'),
            'num_nodes': trainer.get('num_nodes', 1)}


def _device_count(devices: Any, available: int) -> int:
    """Devices one run asks for: an int, a list of ids, or -1 / 'auto' / '-1' (all)."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.strip().lstrip('-').isdigit() and int(devices) > 0:
        return int(devices)
    return max(available, 1)


def _local_plan(runs: Sequence[Run], options: Dict[str, Any]) -> Plan:
    import torch
    available = torch.cuda.device_count()
    shape = _trainer_shape(runs[0])
    on_gpu = available > 0 and shape['accelerator'] in GPU_ACCELERATORS
    per_run = min(_device_count(shape['devices'], available), available) if on_gpu else 0
    gpu_slots = max(1, available // per_run) if on_gpu else None
    slots = options.get('max_parallel', gpu_slots or 1)
    slots = max(1, min(slots, gpu_slots or slots, len(runs)))
    jobs = [list(runs[i::slots]) for i in range(slots)]
    gpus = [list(range(i * per_run, (i + 1) * per_run)) if on_gpu else [] for i in range(slots)]
    threads = max(1, (os.cpu_count() or 1) // slots) if slots > 1 and not on_gpu else None
    parameters = {'timeout_min': options.get('time', NO_LIMIT_MIN), 'tasks_per_node': 1,
                  'signal_delay_s': options.get('signal_delay_s', 120)}
    return Plan('local', jobs, parameters, gpus, threads, options.get('max_requeues', 3))


def _slurm_plan(grid_name: str, runs: Sequence[Run], options: Dict[str, Any]) -> Plan:
    shapes = {tuple(sorted(map(str, _trainer_shape(run).items()))) for run in runs}
    if len(shapes) > 1:
        raise GridError('the runs ask for different trainer.accelerator / devices / num_nodes; one job array needs '
                        'one shape: run those cells as separate grids')
    shape = _trainer_shape(runs[0])
    devices, num_nodes = shape['devices'], shape['num_nodes']
    gpus = options.get('gpus_per_node')
    if gpus is None and shape['accelerator'] in ('gpu', 'cuda') and isinstance(devices, int) and devices > 0:
        gpus = devices
    uses_gpus = shape['accelerator'] in GPU_ACCELERATORS and gpus
    # Lightning's SLURM environment runs one process per SLURM task: one task per device
    tasks = gpus if uses_gpus else (devices if isinstance(devices, int) and devices > 0 else 1)
    if isinstance(devices, int) and devices > 0 and devices != tasks:
        raise GridError(f'trainer.devices is {devices} but --gpus-per-node is {gpus}: Lightning needs one SLURM task '
                        f'per device, set them equal')
    nodes = options.get('nodes', num_nodes if isinstance(num_nodes, int) else 1)
    if isinstance(num_nodes, int) and num_nodes != nodes:
        raise GridError(f'trainer.num_nodes is {num_nodes} but --nodes is {nodes}; set them equal')
    parameters = {
        'job_name': f'grid_{grid_name}', 'time': options.get('time', 24 * 60), 'nodes': nodes,
        'ntasks_per_node': tasks, 'gpus_per_node': gpus if uses_gpus else None,
        'cpus_per_task': options.get('cpus_per_task'),
        'mem': f'{options["mem_gb"]:g}GB' if 'mem_gb' in options else None,
        'partition': options.get('partition'), 'account': options.get('account'), 'qos': options.get('qos'),
        'constraint': options.get('constraint'), 'array_parallelism': options.get('array_parallelism', len(runs)),
        'signal_delay_s': options.get('signal_delay_s', 120), 'setup': options.get('setup'),
    }
    parameters = {k: v for k, v in parameters.items() if v is not None}
    return Plan('slurm', [[run] for run in runs], parameters, max_requeues=options.get('max_requeues', 3))


def make_plan(grid_name: str, runs: Sequence[Run], options: Dict[str, Any]) -> Plan:
    """Jobs and resources for ``runs``; raises ``GridError`` when the executor options contradict the configs."""
    if options['name'] == 'slurm':
        return _slurm_plan(grid_name, runs, options)
    return _local_plan(runs, options)


def submit(plan: Plan, folder: Path, cwd: str) -> Dict[str, Any]:
    """Submit every job of ``plan``; return the submitit jobs by run name (the same job for runs sharing one)."""
    import submitit

    from .job import RunSequence

    def payload(runs: Sequence[Run], threads: Optional[int] = None) -> RunSequence:
        return RunSequence([{'name': r.name, 'dir': str(r.dir.resolve()), 'config_sha': r.config_sha} for r in runs],
                           cwd=cwd, threads=threads)

    folder = Path(folder).resolve() / '%j'
    if plan.kind == 'slurm':
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=plan.max_requeues)
        executor.update_parameters(**plan.parameters)
        jobs = executor.submit_array([payload(runs) for runs in plan.jobs])
    else:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=plan.max_requeues)
        jobs = []
        try:
            for runs, gpus in zip(plan.jobs, plan.gpus):
                executor.update_parameters(**plan.parameters, gpus_per_node=len(gpus), visible_gpus=tuple(gpus))
                jobs.append(executor.submit(payload(runs, plan.threads)))
        except BaseException:  # all or nothing, as one SLURM array is
            cancel(jobs)
            raise
    return {run.name: job for runs, job in zip(plan.jobs, jobs) for run in runs}


def job_record(kind: str, job: Any) -> Dict[str, str]:
    return {'executor': kind, 'job_id': str(job.job_id), 'folder': str(job.paths.folder)}


def job_alive(record: Mapping[str, str]) -> bool:
    """Whether the job of a ``jobs.json`` record is still queued or running."""
    import submitit
    folder, job_id = Path(record['folder']), record['job_id']
    if record.get('executor') == 'slurm':
        return not submitit.SlurmJob(folder=folder, job_id=job_id).done()
    if submitit.LocalJob(folder=folder, job_id=job_id).paths.result_pickle.exists():
        return False
    try:  # a local job's id is the pid of its controller, which outlives the grid process that started it
        os.kill(int(job_id), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def cancel(jobs: Sequence[Any]) -> None:
    """Cancel running jobs (a local job's tasks get SIGINT: Lightning stops cleanly, the run resumes later)."""
    for job in {id(job): job for job in jobs}.values():
        if not job.done():
            job.cancel(check=False)
