import { invalidArgument } from '../../base/errors.js';
import { push, type PushResult } from '../../transfer/push/push.js';
import { resolveToken } from '../../transfer/push/auth.js';
import { type Command, flag, str, throttled } from '../command.js';
import { bytes, count, percent } from '../format.js';
import { CLIENT_TLS_OPTIONS, clientTls } from '../tls.js';

const command: Command<PushResult> = {
  name: 'push',
  usage: 'push <image file | repository image (name, digest)> <host:port> [--name N] [--token T | --token-file F] (--tls-fingerprint SHA256 | --tls-ca FILE | --insecure) [--no-compress]',
  options: {
    name: { type: 'string' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    ...CLIENT_TLS_OPTIONS,
    'no-compress': { type: 'boolean' },
  },
  allowPositionals: true,
  async run(args, ctx) {
    const [image, address, extra] = args.positionals;
    if (!image || !address || extra) throw invalidArgument('push takes an image and a host:port');
    const tls = clientTls(args, 'push');
    const token = resolveToken({ token: str(args, 'token'), tokenFile: str(args, 'token-file') });
    const bar = ctx.progress('push');
    const progressEvent = throttled((p: object) => ctx.event({ event: 'progress', ...p }));
    try {
      return await push(image, address, {
        token,
        insecure: flag(args, 'insecure'),
        tls,
        name: str(args, 'name'),
        repo: ctx.repoPath,
        compress: !flag(args, 'no-compress'),
        signal: ctx.signal,
        onProgress: (p) => {
          bar.update(p.haveBlocks, p.blockCount, `sent ${count(p.blocksSent)} blocks, ${bytes(p.wireBytesSent)} on the wire`);
          progressEvent(p);
        },
      });
    } finally {
      bar.done();
    }
  },
  render(r) {
    if (r.alreadyPresent) return `image ${r.digest} is already in the receiver's repository: nothing sent`;
    const share = r.blockCount ? r.blocksSent / r.blockCount : 0;
    return [
      `image      ${r.digest}${r.name ? ` (${r.name})` : ''}, ${bytes(r.size)} in ${count(r.blockCount)} blocks`,
      `sent       ${count(r.blocksSent)} blocks (${percent(share)}), ${bytes(r.rawBytesSent)} of data as ${bytes(r.encodedBytesSent)}; ${bytes(r.wireBytesSent)} on the wire`,
      `receiver   ${count(r.localBlocks)} blocks from its repository, ${count(r.resumedBlocks)} kept from an earlier attempt, ${count(r.duplicateBlocks)} repeats, ${count(r.zeroBlocks)} zero`,
      `time       ${r.seconds.toFixed(2)} s, ${bytes(r.size / Math.max(r.seconds, 1e-9))}/s observed, ${bytes(r.wireBytesSent / Math.max(r.seconds, 1e-9))}/s on the wire`,
    ].join('\n');
  },
};
export default command;
