/** qcow2: the bootable raw disk converted by qemu-img (deterministic: no times in its header). */
import { logged, type OutputContext } from './context.js';

export async function writeQcow2(path: string, rawDisk: string, ctx: OutputContext): Promise<void> {
  await logged('qcow2 conversion', 'qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rawDisk, path], ctx);
}
