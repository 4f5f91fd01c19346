"""A CPU llama-server for the replay scripts here: start on a free port, wait for /health (shared by both)."""
import socket, subprocess, time, httpx


def start(srv: str, model: str, log_path: str) -> tuple[subprocess.Popen, str]:
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    proc = subprocess.Popen([srv, '-m', model, '-c', '512', '-np', '1', '-t', '2', '-ngl', '0', '-fa', 'on',
                             '--host', '127.0.0.1', '--port', str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log_path, 'w'))
    base = f'http://127.0.0.1:{port}'
    for _ in range(240):
        try:
            if httpx.get(base + '/health').status_code == 200: break
        except httpx.HTTPError: pass
        time.sleep(0.5)
    return proc, base
