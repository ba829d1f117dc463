/* The policy form: show "lease" only for the algorithms that can lease.
 *
 * The algorithms come from the checkbox's data-algorithms attribute (set by
 * PolicyAdmin from types.LEASE_ALGORITHMS). A ticked lease stays visible, so a
 * refused one shows its error and can be unticked. Policy.clean() is the guard.
 */
'use strict';
{
    function syncLeaseRow() {
        const lease = document.getElementById('id_lease');
        const algorithm = document.getElementById('id_algorithm');
        const row = lease && lease.closest('.form-row');
        if (!algorithm || !row) {
            return;  // read-only page: nothing to toggle
        }
        const algorithms = (lease.dataset.algorithms || '').split(' ');
        const applies = algorithms.includes(algorithm.value) || lease.checked;
        row.classList.toggle('hidden', !applies);  // the admin's display: none
    }

    window.addEventListener('DOMContentLoaded', function() {
        const algorithm = document.getElementById('id_algorithm');
        if (algorithm) {
            algorithm.addEventListener('change', syncLeaseRow);
        }
        syncLeaseRow();
    });
}
