"""Stand-ins for SLURM's sbatch, srun, sacct, scancel and scontrol, for tests on a machine without SLURM.

They record what was submitted and run it here: ``sbatch`` parses the script's ``#SBATCH`` lines, appends them to
``$FAKE_SLURM_DIR/submissions.jsonl`` and starts a background runner that executes each array task's batch script
(``--array=0-N%P`` at most P at a time) with SLURM's environment variables; ``srun`` starts the tasks of a step;
``sacct --parsable2`` reports the states; ``scancel`` cancels or signals (``--signal``) a job or array task;
``scontrol requeue`` re-runs an array task when its script exits, as SLURM does. ``FAKE_SLURM_HOLD=1`` makes
``sbatch`` record without running (jobs stay PENDING); ``FAKE_SLURM_FAIL=message`` makes it fail with that message.

Installed by ``install(bin_dir)``: one small shell wrapper per command, calling this file with the test's Python.
"""
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

COMMANDS = ('sbatch', 'srun', 'sacct', 'scancel', 'scontrol')


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        path = bin_dir / command
        path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {command} "$@"\n')
        path.chmod(0o755)


def _dir() -> Path:
    return Path(os.environ['FAKE_SLURM_DIR'])


@contextmanager
def _state():
    """Read-modify-write of the shared state, one process at a time."""
    with open(_dir() / 'state.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = _dir() / 'state.json'
        state = json.loads(path.read_text()) if path.exists() else {'next_id': 4000 + os.getpid() % 1000 * 10,
                                                                     'jobs': {}}
        yield state
        path.write_text(json.dumps(state, indent=1))


def _split(job_id: str):
    job, _, index = job_id.partition('_')
    return job, index or '0'


def sbatch(args):
    if os.environ.get('FAKE_SLURM_FAIL'):
        sys.exit(f'sbatch: error: {os.environ["FAKE_SLURM_FAIL"]}')
    script = Path(args[-1])
    text = script.read_text()
    params = dict(re.findall(r'^#SBATCH --([\w-]+)(?:=(.*))?$', text, re.M))
    array = params.get('array')
    indices, parallel = ['0'], 1
    if array:
        match = re.fullmatch(r'(\d+)-(\d+)(?:%(\d+))?', array)
        first, last = int(match.group(1)), int(match.group(2))
        indices = [str(i) for i in range(first, last + 1)]
        parallel = int(match.group(3) or len(indices))
    with _state() as state:
        job_id = str(state['next_id'])
        state['next_id'] += 1
        state['jobs'][job_id] = {'script': str(script.resolve()), 'params': params, 'array': bool(array),
                                 'parallel': parallel,
                                 'tasks': {i: {'state': 'PENDING', 'pids': [], 'requeue': False, 'restarts': 0}
                                           for i in indices}}
    with open(_dir() / 'submissions.jsonl', 'a') as fh:
        fh.write(json.dumps({'job_id': job_id, 'argv': args, 'params': params, 'script': text}) + '\n')
    if os.environ.get('FAKE_SLURM_HOLD') != '1':
        log = open(_dir() / f'runner_{job_id}.log', 'w')
        subprocess.Popen([sys.executable, __file__, '_run', job_id], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    print(f'Submitted batch job {job_id}')


def _task_env(job_id: str, index: str, job: dict, restarts: int) -> dict:
    params = job['params']
    nodes = int(params.get('nodes', 1))
    per_node = int(params.get('ntasks-per-node', 1))
    env = {**os.environ, 'SLURM_JOB_ID': str(int(job_id) * 1000 + int(index)) if job['array'] else job_id,
           'SLURM_JOB_NAME': params.get('job-name', 'fake'), 'SLURM_NTASKS': str(nodes * per_node),
           'SLURM_NTASKS_PER_NODE': str(per_node), 'SLURM_JOB_NUM_NODES': str(nodes), 'SLURM_NODEID': '0',
           'SLURM_JOB_NODELIST': 'localhost', 'SLURM_RESTART_COUNT': str(restarts),
           'SLURM_CPUS_PER_TASK': params.get('cpus-per-task', '1')}
    if job['array']:
        env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=index)
    return env


def _run(job_id: str):
    """The background runner of one submitted job: array tasks, at most `parallel` at once, requeues included."""
    running = {}
    while True:
        with _state() as state:
            job = state['jobs'][job_id]
            for index, task in job['tasks'].items():
                proc = running.get(index)
                if proc is not None and proc.poll() is not None:
                    del running[index]
                    if task['requeue'] and task['state'] != 'CANCELLED':
                        task.update(requeue=False, state='PENDING', restarts=task['restarts'] + 1)
                    elif task['state'] != 'CANCELLED':
                        task['state'] = 'COMPLETED' if proc.returncode == 0 else 'FAILED'
            for index, task in job['tasks'].items():
                if task['state'] == 'PENDING' and len(running) < job['parallel']:
                    env = _task_env(job_id, index, job, task['restarts'])
                    running[index] = subprocess.Popen(['bash', job['script']], env=env, stdin=subprocess.DEVNULL,
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    task['state'] = 'RUNNING'
            if not running and all(t['state'] != 'PENDING' for t in job['tasks'].values()):
                return
        time.sleep(0.2)


def _expand(pattern: str, env: dict, rank: int) -> str:
    job = env.get('SLURM_ARRAY_JOB_ID', env['SLURM_JOB_ID'])
    return (pattern.replace('%A', job).replace('%a', env.get('SLURM_ARRAY_TASK_ID', '0'))
            .replace('%j', env['SLURM_JOB_ID']).replace('%t', str(rank)))


def srun(args):
    options, i = {}, 0
    while i < len(args) and args[i].startswith('-'):
        key, eq, value = args[i].partition('=')
        if key in ('--output', '--error', '-o', '-e') and not eq:
            value, i = args[i + 1], i + 1
        options[key.lstrip('-')] = value
        i += 1
    command = args[i:]
    ntasks = int(os.environ.get('SLURM_NTASKS', '1'))
    procs = []
    for rank in range(ntasks):
        env = {**os.environ, 'SLURM_PROCID': str(rank), 'SLURM_LOCALID': str(rank), 'SLURM_STEP_ID': '0'}
        out = open(_expand(options.get('output', '/dev/null'), env, rank), 'a')
        err = open(_expand(options['error'], env, rank), 'a') if 'error' in options else out
        procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))
    job_id = os.environ.get('SLURM_ARRAY_JOB_ID', os.environ['SLURM_JOB_ID'])
    index = os.environ.get('SLURM_ARRAY_TASK_ID', '0')
    with _state() as state:
        state['jobs'][job_id]['tasks'][index]['pids'] = [p.pid for p in procs]
    codes = [p.wait() for p in procs]
    sys.exit(next((c for c in codes if c), 0) % 256)


def sacct(args):
    wanted = [args[i + 1] for i, a in enumerate(args) if a == '-j']
    print('JobID|State|NodeList')
    with _state() as state:
        for job_id in wanted:
            job = state['jobs'].get(_split(job_id)[0])
            for index, task in (job or {}).get('tasks', {}).items():
                print(f'{job_id}_{index}|{task["state"]}|localhost' if job['array'] else
                      f'{job_id}|{task["state"]}|localhost')


def _tasks(state, job_id):
    job, index = _split(job_id)
    tasks = state['jobs'][job]['tasks']
    return [tasks[index]] if '_' in job_id else list(tasks.values())


def scancel(args):
    sig = next((args[i + 1] if '=' not in a else a.split('=', 1)[1] for i, a in enumerate(args)
                if a.split('=')[0] in ('--signal', '-s')), None)
    job_id = next(a for a in args if re.fullmatch(r'\d+(_\d+)?', a))
    with _state() as state:
        tasks = _tasks(state, job_id)
        if sig is None:
            for task in tasks:
                if task['state'] in ('PENDING', 'RUNNING'):
                    task['state'] = 'CANCELLED'
    number = getattr(signal, sig if sig.startswith('SIG') else f'SIG{sig}') if sig else signal.SIGTERM
    for task in tasks:
        for pid in task['pids']:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass


def scontrol(args):
    assert args[0] == 'requeue', args
    with _state() as state:
        for task in _tasks(state, args[1]):
            task['requeue'] = True


if __name__ == '__main__':
    command, rest = sys.argv[1], sys.argv[2:]
    {'sbatch': sbatch, 'srun': srun, 'sacct': sacct, 'scancel': scancel, 'scontrol': scontrol,
     '_run': lambda a: _run(a[0])}[command](rest)
