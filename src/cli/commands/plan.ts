/** `osfarm plan`: which blocks of an image the repository has, and which a transfer must send. */
import { type Plan, Repository } from '../../repo/index.js';
import { type Command, flag } from '../command.js';
import { bytes, count, percent } from '../format.js';

/** `.osfi` files are indexes; anything else is an image, indexed with the repository's parameters. */
function isIndex(path: string): boolean {
  return path.endsWith('.osfi');
}

const command: Command<Plan & { runs: number }> = {
  name: 'plan',
  section: 'repository',
  summary: 'which blocks of an image the repository has, and which a transfer must send',
  usage: ['IMAGE|INDEX.osfi [--runs]'],
  options: { runs: { type: 'boolean', description: 'list the missing runs (first block + count); with --json they are in missingRuns' } },
  operands: { complete: 'file', min: 1, max: 1 },
  examples: [{ command: 'osfarm plan new.tar', what: 'which of new.tar\'s blocks the repository already has' }],
  async run(args, ctx) {
    const [input] = args.positionals as [string];
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
