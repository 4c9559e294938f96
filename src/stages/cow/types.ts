/** The copy-on-write backend interface: how a new stage starts as an instant copy of its parent. */

export type CowName = 'btrfs' | 'overlayfs' | 'reflink' | 'lvm-thin' | 'copy';

/** Every backend, in the order auto-selection tries them. */
export const COW_NAMES: readonly CowName[] = ['btrfs', 'overlayfs', 'reflink', 'lvm-thin', 'copy'];

export interface ProbeResult {
  available: boolean;
  /** Why not, and what it would need (when unavailable); how it works (when available). */
  detail: string;
}

/**
 * A stage's trees: `layers[0]` is the stage's own tree; for a layered backend (overlayfs)
 * the rest are its ancestors' trees, nearest first, down to the core. Full-tree backends
 * only look at `layers[0]`.
 */
export interface StageTrees {
  layers: string[];
}

/** A writable directory holding a full tree, being made into a stage or used as a checkout. */
export interface Workspace {
  /** The directory to write in (an overlayfs mount, a btrfs snapshot, a copy). */
  dir: string;
  /** Makes the tree final: unmounts the overlay, sets the btrfs snapshot read-only. Only for new stages. */
  seal(): Promise<void>;
  /** Unmounts whatever the workspace mounted; the store then removes its directory. Safe after a failed seal. */
  discard(): Promise<void>;
}

/** A read-only view of a complete stage's full tree. */
export interface View {
  dir: string;
  close(): Promise<void>;
}

export interface CowMethod {
  readonly name: CowName;
  /** True when a stage's tree holds only its changes over the parent (overlayfs upper layers). */
  readonly layered: boolean;
  /** True when a child shares its parent's unchanged data on disk (all but plain copy). */
  readonly sharesData: boolean;
  /** Whether this backend works for a store in `root` (probing the file system for real where it can). */
  probe(root: string): Promise<ProbeResult>;
  /**
   * Makes `<dir>/tree` for a new stage: empty for a core (parent null), else an instant
   * copy-on-write copy of the parent. `dir` exists and is empty; the backend may put
   * other things in it (overlayfs: `work`, `merged`).
   */
  snapshot(parent: StageTrees | null, dir: string): Promise<Workspace>;
  /** A read-only full view of a complete stage; `at` is an empty directory the backend may mount on. */
  view(stage: StageTrees, at: string): Promise<View>;
  /** A writable working copy of a complete stage in `dir` (exists, empty); seal() is not used. */
  checkout(stage: StageTrees, dir: string): Promise<Workspace>;
}
