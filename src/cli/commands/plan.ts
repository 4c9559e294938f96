import { invalidArgument } from '../../base/errors.js';
import { type Plan, Repository } from '../../repo/index.js';
import { type Command, flag } from '../command.js';
import { bytes, count, percent } from '../format.js';

/** `.osfi` files are indexes; anything else is an image, indexed with the repository's parameters. */
function isIndex(path: string): boolean {
  return path.endsWith('.osfi');
}

const command: Command<Plan & { runs: number }> = {
  name: 'plan',
  usage: 'plan <image|index.osfi> [--repo DIR] [--runs]',
  options: { runs: { type: 'boolean' } },
  allowPositionals: true,
  async run(args, ctx) {
    const [input, extra] = args.positionals;
    if (!input || extra) throw invalidArgument('plan takes one image or .osfi index');
    const repo = Repository.open(ctx.repoPath);
    const bar = ctx.progress('plan');
    try {
      const p = await repo.plan(isIndex(input) ? { index: input } : { image: input }, {
        onProgress: (e) => bar.update(e.done, e.total),
        signal: ctx.signal,
      });
      // The run list can be long: in JSON only with --runs; its length always.
      return { ...p, runs: p.missingRuns.length, missingRuns: flag(args, 'runs') ? p.missingRuns : [] };
    } finally {
      bar.done();
    }
  },
  render(p) {
    if (p.alreadyPresent) return `image ${p.digest} is already in the repository: nothing to fetch`;
    const share = (n: number) => percent(p.blockCount ? n / p.blockCount : 0);
    const lines = [
      `image    ${p.digest}, ${bytes(p.imageSize)} in ${count(p.blockCount)} blocks of ${p.blockSize} B`,
      `present  ${count(p.presentBlocks)} blocks (${share(p.presentBlocks)}), ${bytes(p.presentBytes)}, from ${count(p.sources.length)} images`,
      `zero     ${count(p.zeroBlocks)} blocks (${share(p.zeroBlocks)}), ${bytes(p.zeroBytes)}`,
      `repeats  ${count(p.duplicateBlocks)} blocks, ${bytes(p.duplicateBytes)} (sent once)`,
      `missing  ${count(p.missingBlocks)} blocks (${share(p.missingBlocks)}), ${bytes(p.missingBytes)} in ${count(p.runs)} runs`,
    ];
    for (const r of p.missingRuns) lines.push(`  run ${r.first}+${r.count}`);
    return lines.join('\n');
  },
};
export default command;
