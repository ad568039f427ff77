//! Who may manage whom in a group: the rule behind adding, promoting and removing members.

use lanes_protocol::http::Role;

/// Whether a member with role `actor` may add someone as `target`, or remove someone who is
/// `target`: the owner manages everyone but the owner, admins manage plain members, and nobody
/// makes or removes an owner (ownership only passes on when the owner leaves).
pub fn may_manage(actor: Role, target: Role) -> bool {
    match (actor, target) {
        (_, Role::Owner) => false,
        (Role::Owner, _) => true,
        (Role::Admin, Role::Member) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(actor: Role, target: Role, expected: bool) {
        assert_eq!(
            may_manage(actor, target),
            expected,
            "{actor:?} → {target:?}"
        );
    }

    #[test]
    fn roles() {
        use Role::*;
        check(Owner, Admin, true);
        check(Owner, Member, true);
        check(Owner, Owner, false);
        check(Admin, Member, true);
        check(Admin, Admin, false);
        check(Admin, Owner, false);
        check(Member, Member, false);
        check(Member, Admin, false);
    }
}
