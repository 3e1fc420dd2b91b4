"""Non-private reference for the README: where the error floor at large ε comes from.

    OMP_NUM_THREADS=1 python experiments/mean_estimation/floor.py

For each k and mode on the eval seeds of BASE (s/τ = 1, 256 examples/step, T = 200):
(a) the exact fixed point of the mode (the mean of the capped user means for ULS,
of all capped examples for ELS) — the error of infinitely many small steps; and
(b) σ = 0 DP-SGD at the study's compute with the best (lr, C) of the grid (C = inf
included), chosen on the eval seeds themselves (slightly optimistic).
"""
import sys, itertools, numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import configs
from fl_userdp.study import mean_estimation as me
spec=me.TaskSpec(num_users=10000, dim=16)
grid=list(itertools.product(configs.LR_GRID, configs.CLIP_GRID+[np.inf]))
lrs=[g[0] for g in grid]; cl=[g[1] for g in grid]
pops=[me.Population(spec,s) for s in configs.EVAL_SEEDS]
for k in configs.K_GRID:
    q=256/me.expected_kept(spec,k)
    for mode in me.MODES:
        fp=[]; errs=[]
        for p in pops:
            c=p.capped(k)
            if mode=='uls': t=c.means.mean(0)
            else: t=p.examples(c.kept.owners,c.kept.example_ids).mean(0)
            fp.append(((t-p.target)**2).sum())
            errs.append(me.train(p,mode,k,q,0.0,lrs,cl,200,p.seed).errors)
        m=np.mean(errs,0); g=int(np.argmin(m))
        print(f"k={k} {mode}: fixed-point (full-batch, exact) {np.mean(fp):.4f}±{np.std(fp,ddof=1):.4f}; sigma=0, T=200, 256/step best lr={lrs[g]} C={cl[g]}: {m[g]:.4f}±{np.std(np.array(errs)[:,g],ddof=1):.4f}", flush=True)
