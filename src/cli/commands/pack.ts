import { invalidArgument } from '../../base/errors.js';
import { parseSize } from '../../base/size.js';
import { pack, type PackResult } from '../../pack/index.js';
import { type Command, str } from '../command.js';
import { bytes, count } from '../format.js';

const command: Command<PackResult & { output: string }> = {
  name: 'pack',
  section: 'repository',
  summary: 'write a tree, tar or tar.gz as a block-aligned tar',
  usage: ['DIR|TAR|TAR.GZ -o IMAGE.tar [--block-size N] [--source-date-epoch S] [--max-size N]'],
  description: 'Every regular file\'s data starts on a block boundary, so equal files give equal blocks in different images (docs/aligned-tar.md).',
  options: {
    output: { type: 'string', short: 'o', value: 'IMAGE.tar', complete: 'file', description: 'the block-aligned tar to write (required)' },
    'block-size': { type: 'string', short: 'b', value: 'N', description: 'the alignment: 4K (default), 512 to 1M, a power of two' },
    'source-date-epoch': { type: 'string', value: 'S', description: 'clamp file times to S seconds since 1970 (reproducible output)' },
    'max-size': { type: 'string', value: 'N', description: 'refuse an input that would make a tar larger than N, like 20G (a bound for untrusted input)' },
  },
  operands: { complete: 'file', min: 1, max: 1 },
  examples: [
    { command: 'osfarm pack rootfs/ -o rootfs.tar', what: 'a block-aligned tar of a directory tree' },
    { command: 'osfarm pack image.tar.gz -o image.tar --source-date-epoch 1700000000', what: 're-pack a tar.gz, file times clamped' },
  ],
  async run(args, ctx) {
    const [input] = args.positionals as [string];
    const output = str(args, 'output');
    if (!output) throw invalidArgument('pack needs -o IMAGE.tar (the block-aligned tar to write)');
    const bs = str(args, 'block-size');
    const epoch = str(args, 'source-date-epoch');
    const maxSize = str(args, 'max-size');
    if (epoch !== undefined && !/^\d+$/.test(epoch)) throw invalidArgument(`--source-date-epoch: '${epoch}' is not a number of seconds`);
    const bar = ctx.progress('pack');
    try {
      const r = await pack(input, output, {
        blockSize: bs === undefined ? undefined : parseSize(bs, '--block-size'),
        sourceDateEpoch: epoch === undefined ? undefined : Number(epoch),
        maxSize: maxSize === undefined ? undefined : parseSize(maxSize, '--max-size'),
        onProgress: (e) => bar.update(e.done, e.total),
        signal: ctx.signal,
      });
      return { ...r, output };
    } finally {
      bar.done();
    }
  },
  render(r) {
    const lines = [
      `${r.output}: ${bytes(r.outputSize)}, ${count(r.entries)} entries (${count(r.regularFiles)} files, ${bytes(r.fileBytes)} of data)`,
      `alignment padding ${bytes(r.paddingBytes)}`,
    ];
    if (r.skipped) lines.push(`skipped ${count(r.skipped)} sockets (tar cannot store them)`);
    return lines.join('\n');
  },
};
export default command;
