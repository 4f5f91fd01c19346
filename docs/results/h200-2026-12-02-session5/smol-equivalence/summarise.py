"""Summaries of probe-*.json and tf-*.json (see README.md beside): margins at the divergences, CPU-vs-CUDA agreement."""
import json,gzip
import pathlib
HERE=pathlib.Path(__file__).resolve().parent
D=str(HERE.parent)+'/'
F={'4x2':D+'20261202T080342-smollm2-135m-4x2.jsonl.gz','64x2':D+'20261202T080452-smollm2-135m-64x2.jsonl.gz','dense':D+'20261202T080603-SmolLM2-135M-Instruct.Q4_1.jsonl.gz'}
outs={}
for m,p in F.items():
    for d in map(json.loads, gzip.open(p,'rt')):
        if d.get('kind')=='request': outs.setdefault(m+'/'+d['arm'],{}).setdefault(d['prompt_id'],d['token_ids'])
def fd(a,b):
    for i,(x,y) in enumerate(zip(a,b)):
        if x!=y: return i
    return None
for lab in ('moe4x2','dense'):
    r=json.load(open(f'{HERE}/probe-{lab}.json'))
    bad={k:(r['prompt_tokens_cpu'][k],r['prompt_tokens_h200'][k]) for k in r['prompt_tokens_cpu'] if r['prompt_tokens_cpu'][k]!=r['prompt_tokens_h200'][k]}
    print(lab,'prompt token count mismatches', bad)
    for arm,o in outs.items():
        m=[fd(r['greedy'][p],o[p]) for p in sorted(o)]
        print(f'  CPU {lab} greedy vs CUDA {arm}: {sum(x is None for x in m)}/12 identical, first div {m}')
    print('  probes (CPU logprobs at the CUDA prefix):')
    for p in r['probes']:
        gap = None if p['lp_a'] is None or p['lp_b'] is None else abs(p['lp_a']-p['lp_b'])
        t1,t2=p['top'][0],p['top'][1]
        print(f"   {p['a']:>14} vs {p['b']:<12} {p['prompt']:<17} @{p['pos']:>3} a={p['tok_a']:>6} b={p['tok_b']:>6} |lp_a-lp_b|={gap if gap is None else round(gap,4)} cpu top1 {t1[0]}({t1[2]!r}) {t1[1]:.4f} top2 {t2[0]}({t2[2]!r}) {t2[1]:.4f}")
import json, statistics as st
EOG={0,2}  # SmolLM2's <|endoftext|>, <|im_end|>: ignore_eos bans them when sampling; raw n_probs still show them
r=json.load(gzip.open(HERE/'tf-moe4x2.json.gz','rt'))
q=lambda xs,p: xs[min(len(xs)-1,int(p*len(xs)))]
for arm in ('4x2/baseline','4x2/cpu-moe','dense/baseline'):
    n=agree=0; behind=[]; eog=0; unk=0; where=[]
    for k,rows in r.items():
        if not k.startswith(arm+'|'): continue
        for i,(t1,l1,t2,l2,lc) in enumerate(rows):
            if t1 in EOG:
                eog+=1
                if t2 in EOG: unk+=1; continue
                t1,l1=t2,l2
            n+=1
            d=l1-lc
            if d==0: agree+=1
            else: behind.append(d); where.append((round(d,3),k,i))
    behind.sort()
    print(f'{arm}: {n} positions (EOG top-1 skipped to the next: {eog}, unknown {unk}); CPU 4x2 top-1 = CUDA token at {agree} ({agree/n:.1%}); elsewhere CUDA token behind by median {st.median(behind):.3f}, p90 {q(behind,0.9):.3f}, max {max(behind):.3f} (n={len(behind)})')
    print('   largest:', sorted(where,reverse=True)[:4])
ms=[]
for k,rows in r.items():
    if not k.startswith('4x2/baseline|'): continue
    for t1,l1,t2,l2,lc in rows:
        if t1 in EOG or t2 in EOG: continue
        ms.append(l1-l2)
ms.sort()
for th in (0.05,0.1,0.3,0.5,1.0,1.5): print(f'CPU top1-top2 margin < {th}: {sum(m<th for m in ms)}/{len(ms)} = {sum(m<th for m in ms)/len(ms):.1%}')
print('median margin', st.median(ms))
