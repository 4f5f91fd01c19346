"""CPU estimate of the top-2 margins at the CUDA divergences: replay each CUDA output's shared prefix.

usage: PYTHONPATH=REPO python replay_divergences.py MODEL.gguf LABEL   ($LLAMA_SERVER: a CPU llama-server)
writes probe-LABEL.json here: the CPU greedy outputs and, at each CUDA divergence, the logprobs of both CUDA tokens."""
import gzip, json, socket, subprocess, sys, time, httpx

from abtest.measure.prompts import load_prompts, fit_prompts
import os, pathlib
HERE=pathlib.Path(__file__).resolve().parent
D=str(HERE.parent)+'/'
SRV=os.environ['LLAMA_SERVER']
F={'4x2':D+'20261202T080342-smollm2-135m-4x2.jsonl.gz','64x2':D+'20261202T080452-smollm2-135m-64x2.jsonl.gz','dense':D+'20261202T080603-SmolLM2-135M-Instruct.Q4_1.jsonl.gz'}
outs={}; ptok={}
for m,p in F.items():
    for d in map(json.loads, gzip.open(p,'rt')):
        if d.get('kind')=='request': outs.setdefault((m,d['arm']),{}).setdefault(d['prompt_id'],d['token_ids'])
        if d.get('kind')=='arm_start': ptok.update(d['prompt_tokens'])
def fd(a,b):
    for i,(x,y) in enumerate(zip(a,b)):
        if x!=y: return i
    return None
model, label = sys.argv[1], sys.argv[2]
sys.path.insert(0, str(HERE)); import _cpu_server
proc, base = _cpu_server.start(SRV, model, f'{HERE}/{label}.log')
try:
    fitted=fit_prompts(load_prompts(buckets=['seed004','tok8','tok128']), base)
    texts={f.case.id if hasattr(f.case,'id') else f.case.prompt_id: f.text for f in fitted}
    counts={k: f.n_tokens if hasattr(f,'n_tokens') else None for k,f in zip(texts, fitted)}
    c=httpx.Client(base_url=base, timeout=600)
    def comp(pid, prefix, n, n_probs):
        r=c.post('/completion', json={'prompt':[texts[pid],*prefix],'n_predict':n,'temperature':0,'ignore_eos':True,
               'cache_prompt':False,'return_tokens':True,'seed':0,'n_probs':n_probs}).json()
        return r
    res={'label':label,'prompt_tokens_cpu':counts,'prompt_tokens_h200':ptok,'greedy':{},'probes':[]}
    for pid in texts:
        res['greedy'][pid]=comp(pid,[],128,0)['tokens']
    pairs=[(('4x2','baseline'),('4x2','cpu-moe')),(('64x2','baseline'),('64x2','cpu-moe')),(('dense','baseline'),('4x2','baseline')),(('dense','baseline'),('4x2','cpu-moe'))]
    for a,b in pairs:
        for pid in texts:
            A,B=outs[a][pid],outs[b][pid]; i=fd(A,B)
            if i is None: continue
            r=comp(pid,A[:i],1,20)
            top=[(t['id'],t['logprob'],t['token']) for t in r['completion_probabilities'][0]['top_logprobs']]
            lp={t[0]:t[1] for t in top}
            res['probes'].append({'a':'/'.join(a),'b':'/'.join(b),'prompt':pid,'pos':i,'tok_a':A[i],'tok_b':B[i],
              'lp_a':lp.get(A[i]),'lp_b':lp.get(B[i]),'top':top[:3]})
    json.dump(res,open(f'{HERE}/probe-{label}.json','w'),indent=1)
finally:
    proc.terminate(); proc.wait(10)
