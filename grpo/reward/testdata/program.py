# A reward program for the tests of reward.Program: it speaks the protocol, and its rows'
# responses make it misbehave on purpose. Score: 1 when the response equals the ground truth.
import json
import os
import subprocess
import sys
import time

for line in sys.stdin:
    batch = json.loads(line)["batch"]
    results = []
    for row in batch:
        r = row["response"]
        if r == "crash":
            print("crashing on purpose", file=sys.stderr)
            os._exit(3)
        if r == "hang":
            time.sleep(3600)
        if r == "badjson":
            print("this is not json")
            break
        if r.startswith("spawn:"):
            # A process in a session of its own, out of reach of a kill of the program's
            # process group; its pid goes to the file named.
            child = subprocess.Popen(["sleep", "777"], start_new_session=True)
            with open(r[len("spawn:"):], "w") as f:
                f.write(str(child.pid))
        if r.startswith("stderr:"):
            print(r[len("stderr:"):], file=sys.stderr)
        res = {"score": 1.0 if r == row["ground_truth"] else 0.0, "pid": os.getpid(),
               "data_source": row["data_source"], "prompt": row["prompt"],
               "extra_info": row["extra_info"], "batch_size": len(batch),
               "raw_prompt_in_line": json.dumps(row["prompt"], ensure_ascii=False)[1:-1] in line}
        if r == "abc":
            res["score"] = "abc"
        elif r == "two":
            res["score"] = 2.0
        elif r == "missing":
            del res["score"]
        elif r == "count":
            results.append(res)
        results.append(res)
    else:
        print(json.dumps({"results": results}))
