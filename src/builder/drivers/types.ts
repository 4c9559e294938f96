import type { BootstrapTool, Family } from '../../spec/distros.js';
import type { BuildSpec } from '../../spec/spec.js';

/** Build phases, in order; `phase` events carry one of these. */
export type Phase = 'bootstrap' | 'packages' | 'configure' | 'pack' | 'index';

export interface DriverContext {
  spec: BuildSpec;
  /** The (empty, not yet existing) directory the tree is built in. */
  root: string;
  /** Scratch directory of this build (hook scripts, repo files); removed afterwards. */
  buildDir: string;
  /** Package cache shared between builds (per distribution family), kept out of images. */
  cacheDir: string;
  sourceDateEpoch: number | null;
  signal?: AbortSignal;
  log(line: string): void;
  phase(phase: Phase, detail?: string): void;
}

/** One way of creating a distribution's tree: bootstrap plus the spec's groups and packages. */
export interface Driver {
  /** The backend that runs (mmdebstrap, debootstrap, dnf, yum). */
  readonly tool: Exclude<BootstrapTool, 'auto'>;
  readonly family: Family;
  /** Builds the tree at ctx.root: base system, groups and packages; caches swept. */
  bootstrap(ctx: DriverContext): Promise<void>;
}
