"""Per-prompt token-id agreement of the SmolLM2 H200 evidence: repeats within an arm, and every pair of arms.

usage: python compare.py [4X2 64X2 DENSE]   (default: the three .jsonl.gz beside this folder; warm-ups
included in the repeat check)"""
import sys, json, gzip, collections
import pathlib
D=str(pathlib.Path(__file__).resolve().parent.parent)+'/'
F={'4x2':D+'20261202T080342-smollm2-135m-4x2.jsonl.gz','64x2':D+'20261202T080452-smollm2-135m-64x2.jsonl.gz','dense':D+'20261202T080603-SmolLM2-135M-Instruct.Q4_1.jsonl.gz'}
if len(sys.argv) == 4:
    F = dict(zip(F, sys.argv[1:]))
def load(p):
    return [d for d in map(json.loads, gzip.open(p,'rt')) if d.get('kind')=='request']
def fd(a,b):
    for i,(x,y) in enumerate(zip(a,b)):
        if x!=y: return i
    return None if len(a)==len(b) else min(len(a),len(b))
R={}
for m,p in F.items():
    for r in load(p):
        R.setdefault((m,r['arm'],r['block']),[]).append(r)
for k,v in R.items():
    print(k, len(v), 'warmups', sum(r['warmup'] for r in v), 'errors', sum(r['error'] is not None for r in v), 'lens', collections.Counter(len(r['token_ids']) for r in v))
# within-arm determinism: same prompt, all records (incl warmup) of same (model,arm)
print('\n-- repeats within one arm (all records incl warm-ups, across blocks) --')
for (m,a) in sorted({(k[0],k[1]) for k in R}):
    recs=[r for k,v in R.items() if k[:2]==(m,a) for r in v]
    byp=collections.defaultdict(list)
    for r in recs: byp[r['prompt_id']].append(r)
    tot=same=0; detail=[]
    for pid,rs in byp.items():
        ref=rs[0]['token_ids']
        for r in rs[1:]:
            tot+=1; d=fd(ref,r['token_ids'])
            if d is None: same+=1
            else: detail.append((pid,r['block'],r['run_index'],r['warmup'],d))
    print(m,a,f'{same}/{tot} repeats identical to the first record of the prompt', detail[:10])
print('\n-- across arms, one output per prompt (deterministic) --')
outs={}
for (m,a,b),v in R.items():
    for r in v: outs.setdefault((m,a),{}).setdefault(r['prompt_id'],r)
keys=sorted(outs)
pids=sorted(outs[('dense','baseline')])
import itertools
for x,y in itertools.combinations(keys,2):
    row=[];same=0;chars=[]
    for pid in pids:
        a,b=outs[x][pid],outs[y][pid]
        d=fd(a['token_ids'],b['token_ids'])
        if d is None: same+=1
        cd=fd(a['text'],b['text'])
        row.append(d); chars.append(cd)
    print(f'{x} vs {y}: {same}/{len(pids)} identical; first token divergence', row, 'first char div', chars)
print(pids)
