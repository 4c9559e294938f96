import { resolve } from 'node:path';

import { defaultWorkDir } from '../../base/env.js';
import { invalidArgument } from '../../base/errors.js';
import { FarmWorker, type WorkerSummary } from '../../farm/worker.js';
import { resolveToken } from '../../transfer/push/auth.js';
import { parseAddress } from '../../transfer/address.js';
import { type Command, flag, str, wholeNumber } from '../command.js';
import { CLIENT_TLS_OPTIONS, clientTls } from '../tls.js';

const command: Command<WorkerSummary> = {
  name: 'worker',
  section: 'build',
  summary: 'a build farm worker: takes build jobs from Redis (BullMQ), builds them, pushes the images to the central repository',
  usage: ['--queue redis://HOST:PORT --push-to HOST:PORT [--token T | --token-file F] (--tls-fingerprint SHA256 | --tls-ca FILE | --insecure) [--id NAME] [-d DIR] [--stages DIR] [--lock-ms N]'],
  description:
    "Builds the farm's jobs in its own work directory and stage cache, and pushes each image to the central repository's osfarm receive under the same rules as osfarm push (TLS, or --insecure). Jobs go first to a worker that holds their base stages (docs/farm.md). Runs until SIGINT or SIGTERM; a job it was running is taken over by another worker.",
  options: {
    queue: { type: 'string', value: 'URL', description: "the farm's Redis, redis://HOST:PORT" },
    'push-to': { type: 'string', value: 'HOST:PORT', description: "the central repository's osfarm receive" },
    token: { type: 'string', value: 'T', description: "the receiver's shared token (default $OSFARM_TOKEN); prefer --token-file" },
    'token-file': { type: 'string', value: 'F', complete: 'file', description: "read the receiver's token from F" },
    ...CLIENT_TLS_OPTIONS,
    id: { type: 'string', value: 'NAME', description: 'the name this worker reports (default host name and process id)' },
    'work-dir': { type: 'string', short: 'd', value: 'DIR', complete: 'dir', description: 'where builds run (default $OSFARM_WORK_DIR or the system default)' },
    stages: { type: 'string', value: 'DIR', complete: 'dir', description: "this worker's stage cache (default the work directory's)" },
    'lock-ms': { type: 'string', value: 'N', description: 'how long a job stays locked to this worker without a heartbeat, in ms (100 to 3600000)' },
  },
  operands: { complete: 'none', max: 0 },
  examples: [
    {
      command: 'osfarm worker --queue redis://farm:6379 --push-to central:7070 --token-file ~/.osfarm-token --tls-ca ca.pem',
      what: "take build jobs from the farm's Redis and push each image over TLS to the central repository",
    },
  ],
  async run(args, ctx) {
    const queue = str(args, 'queue');
    const pushTo = str(args, 'push-to');
    if (!queue || !pushTo) throw invalidArgument('worker needs --queue redis://host:port (the farm\'s Redis) and --push-to host:port (the central repository\'s osfarm receive)');
    parseAddress(pushTo);
    // The same rules as push: TLS to the receiver, or plain TCP asked for with --insecure.
    const tls = clientTls(args, 'worker');
    const token = resolveToken({ token: str(args, 'token'), tokenFile: str(args, 'token-file') });
    if (!token && !flag(args, 'insecure')) throw invalidArgument('give the receiver\'s token (--token, --token-file or $OSFARM_TOKEN), or --insecure for a receiver without one');
    const workDir = resolve(str(args, 'work-dir') ?? defaultWorkDir());
    const worker = new FarmWorker({
      url: queue,
      pushTo,
      ...(token ? { token } : {}),
      insecure: flag(args, 'insecure'),
      ...(tls ? { tls } : {}),
      workDir,
      ...(str(args, 'stages') ? { stages: resolve(str(args, 'stages')!) } : {}),
      ...(str(args, 'id') ? { id: str(args, 'id')! } : {}),
      lockMs: wholeNumber(args, 'lock-ms', 100, 3_600_000),
      onEvent: (e) => {
        ctx.event(e);
        if (e.type === 'ready') ctx.info(`worker ${e.id}: taking jobs from ${queue} (${e.stages} cached stages in ${workDir}), pushing to ${pushTo}`);
        else if (e.type === 'job-start') ctx.info(`job ${e.job}: started (attempt ${e.attempt}, from ${e.queue})`);
        else if (e.type === 'job-end') ctx.info(`job ${e.job}: ${e.state} in ${(e.ms / 1000).toFixed(1)} s`);
        else ctx.info(`worker: ${e.message}`);
      },
    });
    await worker.start();
    await new Promise<void>((done) => {
      if (ctx.signal.aborted) done();
      ctx.signal.addEventListener('abort', () => done(), { once: true });
    });
    await worker.stop();
    // With Redis gone, BullMQ's connections keep retrying and would keep the process alive.
    setTimeout(() => process.exit(0), 2000).unref();
    return worker.summary;
  },
  render(r) {
    return `worker ${r.id} stopped after ${r.jobs} job(s): ${r.succeeded} succeeded, ${r.failed} failed`;
  },
};
export default command;
