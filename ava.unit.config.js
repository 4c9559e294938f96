// The unit tier (`npm run test:unit`): the tests that need no root, no network namespace and
// no image build, in under two minutes. Everything else runs in the full suite
// (scripts/test.sh, which .ci/run runs). A new test file belongs here if it needs none of them.
import pkg from './package.json' with { type: 'json' };

export default {
  ...pkg.ava,
  files: [
    '__test__/api.spec.ts',
    '__test__/blocks.spec.ts',
    '__test__/build-spec.spec.ts',
    '__test__/format.spec.ts',
    '__test__/frames-fuzz.spec.ts',
    '__test__/image-paths.spec.ts',
    '__test__/layers.spec.ts',
    '__test__/nbd.spec.ts',
    '__test__/pack-sparse.spec.ts',
    '__test__/repo-cli.spec.ts',
    '__test__/repo.spec.ts',
    '__test__/stages-chain.spec.ts',
    '__test__/transfer-level.spec.ts',
    '__test__/transfer-push.spec.ts',
  ],
};
