"""Teacher-forced CPU replay of CUDA outputs: at every position, CPU top-2 and the CUDA token's logprob.

usage: PYTHONPATH=REPO python teacher_force.py MODEL.gguf LABEL ARM[,ARM...]   ($LLAMA_SERVER: a CPU llama-server;
ARM like 4x2/baseline); writes tf-LABEL.json here: per position [cpu top1 id, lp, top2 id, lp, lp of the CUDA token]."""
import gzip, json, socket, subprocess, sys, time, httpx
from abtest.measure.prompts import load_prompts, fit_prompts
import os, pathlib
HERE=pathlib.Path(__file__).resolve().parent
D=str(HERE.parent)+'/'
SRV=os.environ['LLAMA_SERVER']
F={'4x2':D+'20261202T080342-smollm2-135m-4x2.jsonl.gz','dense':D+'20261202T080603-SmolLM2-135M-Instruct.Q4_1.jsonl.gz'}
outs={}
for m,p in F.items():
    for d in map(json.loads, gzip.open(p,'rt')):
        if d.get('kind')=='request': outs.setdefault(m+'/'+d['arm'],{}).setdefault(d['prompt_id'],d['token_ids'])
model, label, arms = sys.argv[1], sys.argv[2], sys.argv[3].split(',')
sys.path.insert(0, str(HERE)); import _cpu_server
proc, base = _cpu_server.start(SRV, model, f'{HERE}/tf-{label}.log')
try:
    texts={f.case.id: f.text for f in fit_prompts(load_prompts(buckets=['seed004','tok8','tok128']), base)}
    c=httpx.Client(base_url=base, timeout=600)
    res={}
    for arm in arms:
        for pid,ids in outs[arm].items():
            rows=[]
            for i in range(len(ids)):
                r=c.post('/completion', json={'prompt':[texts[pid],*ids[:i]],'n_predict':1,'temperature':0,'ignore_eos':True,
                    'cache_prompt':True,'return_tokens':True,'seed':0,'n_probs':20}).json()
                top=[(t['id'],t['logprob']) for t in r['completion_probabilities'][0]['top_logprobs']]
                lp=dict(top)
                rows.append([top[0][0],top[0][1],top[1][0],top[1][1],lp.get(ids[i])])
            res[f'{arm}|{pid}']=rows
    json.dump(res,open(f'{HERE}/tf-{label}.json','w'))
finally:
    proc.terminate(); proc.wait(10)
