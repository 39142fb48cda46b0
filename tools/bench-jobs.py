#!/usr/bin/env python3
"""The testbed halves of tools/bench-jobs, through the portal's API as a site's user would
(the user benchjobs, password in $BENCH_PASSWORD; tools/bench-jobs makes it):

  latency RUNS        RUNS one-node jobs of `echo ready`, one at a time: submit → its command
                      started (the instance running or ended, looked at every 20 ms) and →
                      its output first readable through the API; p50/p90/max.
  array N LIMIT       one job: an array of N one-second tasks (`sleep 1`), at most LIMIT at
                      once; submit → every instance ended (looked at every 200 ms). Needs the
                      group's batch quota raised first ($BENCH_ROOT_PASSWORD: done here).

Prints Markdown on stdout."""
import json, os, ssl, sys, time, urllib.error, urllib.request

PORTAL = os.environ.get("DOCKLET_PORTAL", "https://portal.docklet.test:8000")
CTX = ssl.create_default_context(cafile="/var/lib/docklet-testbed/site-ca.pem")


def call(method, path, token=None, body=None):
    request = urllib.request.Request(
        PORTAL + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json",
                 **({"authorization": "Bearer " + token} if token else {})})
    try:
        with urllib.request.urlopen(request, context=CTX, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def login(user, password):
    status, body = call("POST", "/api/v1/auth/login", body={"user": user, "password": password})
    assert status == 200, (status, body)
    return body["token"]


def until(what, check, limit=120, every=0.02):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"bench-jobs: {what} did not happen within {limit} s")


def quantile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def latency(token, runs):
    started, readable = [], []
    print("| run | submit → running (s) | submit → output readable (s) | host |")
    print("|---|---|---|---|")
    for run in range(runs):
        t0 = time.monotonic()
        status, job = call("POST", "/api/v1/jobs", token,
                           {"name": f"latency-{run}", "tasks": [{"name": "t", "script": "echo ready"}]})
        assert status == 201, (status, job)
        jid = job["id"]

        def instance():
            status, view = call("GET", f"/api/v1/jobs/{jid}", token)
            i = view["tasks"][0]["instances"][0] if status == 200 else {}
            return i if i.get("state") in ("running", "succeeded", "failed") else None

        seen = until("the command's start", instance)
        t_run = time.monotonic() - t0
        until("its output", lambda: (lambda r: r[0] == 200 and r[1].strip() == "ready")(
            call("GET", f"/api/v1/jobs/{jid}/tasks/t/0/log", token)))
        t_out = time.monotonic() - t0
        started.append(t_run)
        readable.append(t_out)
        print(f"| {run + 1} | {t_run:.3f} | {t_out:.3f} | {','.join(seen.get('hosts', []))} |")
        until("the job's end", lambda: call("GET", f"/api/v1/jobs/{jid}", token)[1].get("state") == "succeeded")
        time.sleep(2)  # its node goes meanwhile (removal takes ~0.5 s): runs do not overlap
    print()
    print("| | p50 | p90 | max |")
    print("|---|---|---|---|")
    for name, values in [("submit → running", started), ("submit → output readable", readable)]:
        print(f"| {name} | {quantile(values, 50):.3f} s | {quantile(values, 90):.3f} s | {max(values):.3f} s |")


def array(token, n, limit):
    root = login("root", os.environ["BENCH_ROOT_PASSWORD"])
    status, me = call("GET", "/api/v1/me", token)
    assert status == 200, (status, me)
    group = me["group"]
    size = {"cpu_millis": 100, "memory_bytes": 128 << 20, "disk_bytes": 256 << 20}
    quota = {"cpu_millis": 100 * limit, "memory_bytes": (128 << 20) * limit,
             "disk_bytes": (256 << 20) * limit, "vnodes": limit, "jobs": 100}
    status, body = call("PATCH", f"/api/v1/groups/{group}", root, {"batch": quota})
    assert status == 200, (status, body)
    t0 = time.monotonic()
    status, job = call("POST", "/api/v1/jobs", token, {
        "name": f"array-{n}", "tasks": [{"name": "t", "array": f"0-{n - 1}%{limit}",
                                         "script": "sleep 1", **size}]})
    assert status == 201, (status, job)
    jid = job["id"]
    most = 0

    def ended():
        nonlocal most
        status, view = call("GET", f"/api/v1/jobs/{jid}", token)
        if status != 200:
            return None
        counts = view["counts"]
        most = max(most, counts.get("running", 0) + counts.get("starting", 0))
        return view if view["state"] in ("succeeded", "failed", "cancelled") else None

    view = until("the array's end", ended, limit=3600, every=0.2)
    makespan = time.monotonic() - t0
    print(json.dumps({"makespan": makespan, "state": view["state"], "counts": view["counts"],
                      "most_at_once": most}))


def main():
    token = login("benchjobs", os.environ["BENCH_PASSWORD"])
    if sys.argv[1] == "latency":
        latency(token, int(sys.argv[2]))
    elif sys.argv[1] == "array":
        array(token, int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


main()
