"""Issue 10, item 3: two clones of one origin, 4 writers each creating in a loop, and
`bd sync` repeated in both clones for DUR seconds. Reports failed syncs, acknowledged
creates missing on a clone, and whether the clones converged.
Usage: python3 scripts/load/sync.py BD DUR
"""
import subprocess, time, os, json, sys, tempfile
BD=sys.argv[1]; DUR=float(sys.argv[2])
d=tempfile.mkdtemp(prefix="bd-sync-")
home=d; cfg=os.path.join(d,"gitconfig"); open(cfg,"w").write("[user]\n\tname=t\n\temail=t@t\n[init]\n\tdefaultBranch=main\n")
env=dict(os.environ,HOME=home,GIT_CONFIG_GLOBAL=cfg,GIT_CONFIG_NOSYSTEM="1",BD_AUTO_START="0",BD_ACTOR="s")
run=lambda args,cwd,**k: subprocess.run(args,cwd=cwd,env=env,**k)
run(["git","init","-q","--bare","origin.git"],d)
run(["git","clone","-q","origin.git","a"],d); A=d+"/a"
run([BD,"init","--prefix","s","-q"],A,stdout=subprocess.DEVNULL); run([BD,"create","base","-q"],A,stdout=subprocess.DEVNULL); run([BD,"sync","-q"],A)
run(["git","clone","-q","origin.git","b"],d); B=d+"/b"
run([BD,"init","-q"],B,stdout=subprocess.DEVNULL); run([BD,"sync","-q"],B)
for c in (A,B): run([BD,"daemon","start","-q","--flush-debounce","50"],c)
script='i=0; while [ $i -lt 2000 ] && [ ! -e stop ]; do i=$((i+1)); "$0" create "$1-$i" -q || exit 1; done'
ws=[subprocess.Popen(["sh","-c",script,BD,f"{n}{w}"],cwd=c,env=env,stdout=subprocess.PIPE,stderr=subprocess.PIPE,text=True) for w in range(4) for n,c in (("a",A),("b",B))]
t0=time.time(); syncs=fails=0; errs=[]
while time.time()-t0<DUR:
    for c in (A,B):
        p=run([BD,"sync","--json"],c,capture_output=True,text=True); syncs+=1
        if p.returncode!=0: fails+=1; errs.append(p.stderr.strip()[:200])
for c in (A,B): open(c+"/stop","w").close()
acked=[]
for w in ws:
    o,e=w.communicate(); acked+=o.split()
    if w.returncode: print("writer failed", e)
for c in (A,B): os.remove(c+"/stop")
for _ in range(2):
    for c in (A,B): run([BD,"sync","-q"],c)
h=[json.loads(run([BD,"info","--json"],c,capture_output=True,text=True).stdout)["state_hash"] for c in (A,B)]
ids=[set(i["id"] for i in json.loads(run([BD,"list","--all","-n","0","--json"],c,capture_output=True,text=True).stdout)) for c in (A,B)]
missing=sum(1 for x in acked if x not in ids[0] or x not in ids[1])
print(f"{DUR:.0f}s: {syncs} syncs, {fails} failed, {len(acked)} acknowledged creates, {missing} missing on a clone, converged={h[0]==h[1]}")
for e in errs[:3]: print("  ",e)
for c in (A,B): run([BD,"daemon","stop","-q"],c)
