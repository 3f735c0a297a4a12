import json,os,sys
d=sys.argv[1]
o=[json.loads(l) for l in open(d+'/tf32_ours.jsonl') if l.startswith('{')]
p={(r['impl'],r['seq'],r['pass']):r for r in (json.loads(l) for l in open(d+'/tf32_pytorch.jsonl') if l.startswith('{')) if 'impl' in r}
for r in o:
    t=p.get((r['mode'],r['seq'],r['pass']))
    print(r['mode'],r['dtype'],r['seq'],r['pass'],r['median_ms'],r['tflops'],'torch_ms',t and t['median_ms'],'x',t and round(t['median_ms']/r['median_ms'],2))
